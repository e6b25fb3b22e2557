"""Bytes in and out: guards on untrusted input, image decoding and codecs, DICOM instances, series and SEG, volumes."""
