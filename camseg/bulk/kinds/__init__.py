"""The kinds of bulk job, one module each: how a kind plans its parts (``create_*_job``),
runs one, and turns the done parts into results, given to the job store as a
:class:`camseg.bulk.store.JobKind` (``KIND``) and registered in
:data:`camseg.bulk.batch.KINDS`."""
