from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CamMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CAM_METHOD_UNSPECIFIED: _ClassVar[CamMethod]
    CAM_METHOD_GRADCAM: _ClassVar[CamMethod]
    CAM_METHOD_GRADCAM_PP: _ClassVar[CamMethod]
    CAM_METHOD_HIRESCAM: _ClassVar[CamMethod]
    CAM_METHOD_LAYERCAM: _ClassVar[CamMethod]
    CAM_METHOD_FUSED: _ClassVar[CamMethod]
    CAM_METHOD_DISTILLED: _ClassVar[CamMethod]
    CAM_METHOD_SCORECAM: _ClassVar[CamMethod]

class Refinement(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REFINEMENT_UNSPECIFIED: _ClassVar[Refinement]
    REFINEMENT_NONE: _ClassVar[Refinement]
    REFINEMENT_CRF: _ClassVar[Refinement]
    REFINEMENT_RANDOM_WALK: _ClassVar[Refinement]
    REFINEMENT_WATERSHED: _ClassVar[Refinement]
    REFINEMENT_GRABCUT: _ClassVar[Refinement]

class HeatmapEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HEATMAP_ENCODING_UNSPECIFIED: _ClassVar[HeatmapEncoding]
    HEATMAP_ENCODING_FLOAT16: _ClassVar[HeatmapEncoding]
    HEATMAP_ENCODING_UINT8: _ClassVar[HeatmapEncoding]

class HeatmapResolution(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HEATMAP_RESOLUTION_UNSPECIFIED: _ClassVar[HeatmapResolution]
    HEATMAP_RESOLUTION_IMAGE: _ClassVar[HeatmapResolution]
    HEATMAP_RESOLUTION_LAYER: _ClassVar[HeatmapResolution]

class WholeMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WHOLE_MODE_UNSPECIFIED: _ClassVar[WholeMode]
    WHOLE_MODE_AUTO: _ClassVar[WholeMode]
    WHOLE_MODE_ALWAYS: _ClassVar[WholeMode]
    WHOLE_MODE_NEVER: _ClassVar[WholeMode]

class MaskEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MASK_ENCODING_UNSPECIFIED: _ClassVar[MaskEncoding]
    MASK_ENCODING_PACKED_BITS: _ClassVar[MaskEncoding]
    MASK_ENCODING_PNG: _ClassVar[MaskEncoding]
    MASK_ENCODING_RLE: _ClassVar[MaskEncoding]
    MASK_ENCODING_DICOM_SEG: _ClassVar[MaskEncoding]

class ThresholdKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    THRESHOLD_KIND_UNSPECIFIED: _ClassVar[ThresholdKind]
    THRESHOLD_KIND_FIXED: _ClassVar[ThresholdKind]
    THRESHOLD_KIND_PERCENTILE: _ClassVar[ThresholdKind]
    THRESHOLD_KIND_OTSU: _ClassVar[ThresholdKind]

class JobKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_KIND_UNSPECIFIED: _ClassVar[JobKind]
    JOB_KIND_SEGMENT: _ClassVar[JobKind]
    JOB_KIND_EVALUATE: _ClassVar[JobKind]
    JOB_KIND_RETRAIN: _ClassVar[JobKind]
    JOB_KIND_SEGMENT_SERIES: _ClassVar[JobKind]

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]
CAM_METHOD_UNSPECIFIED: CamMethod
CAM_METHOD_GRADCAM: CamMethod
CAM_METHOD_GRADCAM_PP: CamMethod
CAM_METHOD_HIRESCAM: CamMethod
CAM_METHOD_LAYERCAM: CamMethod
CAM_METHOD_FUSED: CamMethod
CAM_METHOD_DISTILLED: CamMethod
CAM_METHOD_SCORECAM: CamMethod
REFINEMENT_UNSPECIFIED: Refinement
REFINEMENT_NONE: Refinement
REFINEMENT_CRF: Refinement
REFINEMENT_RANDOM_WALK: Refinement
REFINEMENT_WATERSHED: Refinement
REFINEMENT_GRABCUT: Refinement
HEATMAP_ENCODING_UNSPECIFIED: HeatmapEncoding
HEATMAP_ENCODING_FLOAT16: HeatmapEncoding
HEATMAP_ENCODING_UINT8: HeatmapEncoding
HEATMAP_RESOLUTION_UNSPECIFIED: HeatmapResolution
HEATMAP_RESOLUTION_IMAGE: HeatmapResolution
HEATMAP_RESOLUTION_LAYER: HeatmapResolution
WHOLE_MODE_UNSPECIFIED: WholeMode
WHOLE_MODE_AUTO: WholeMode
WHOLE_MODE_ALWAYS: WholeMode
WHOLE_MODE_NEVER: WholeMode
MASK_ENCODING_UNSPECIFIED: MaskEncoding
MASK_ENCODING_PACKED_BITS: MaskEncoding
MASK_ENCODING_PNG: MaskEncoding
MASK_ENCODING_RLE: MaskEncoding
MASK_ENCODING_DICOM_SEG: MaskEncoding
THRESHOLD_KIND_UNSPECIFIED: ThresholdKind
THRESHOLD_KIND_FIXED: ThresholdKind
THRESHOLD_KIND_PERCENTILE: ThresholdKind
THRESHOLD_KIND_OTSU: ThresholdKind
JOB_KIND_UNSPECIFIED: JobKind
JOB_KIND_SEGMENT: JobKind
JOB_KIND_EVALUATE: JobKind
JOB_KIND_RETRAIN: JobKind
JOB_KIND_SEGMENT_SERIES: JobKind
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState

class Image(_message.Message):
    __slots__ = ("encoded", "raw", "id")
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    encoded: bytes
    raw: RawArray
    id: str
    def __init__(self, encoded: _Optional[bytes] = ..., raw: _Optional[_Union[RawArray, _Mapping]] = ..., id: _Optional[str] = ...) -> None: ...

class RawArray(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class ModelRef(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class ClassifyRequest(_message.Message):
    __slots__ = ("model", "images")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    images: _containers.RepeatedCompositeFieldContainer[Image]
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ..., images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ...) -> None: ...

class Classification(_message.Message):
    __slots__ = ("probabilities", "label", "label_index", "id")
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    LABEL_INDEX_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    probabilities: _containers.RepeatedScalarFieldContainer[float]
    label: str
    label_index: int
    id: str
    def __init__(self, probabilities: _Optional[_Iterable[float]] = ..., label: _Optional[str] = ..., label_index: _Optional[int] = ..., id: _Optional[str] = ...) -> None: ...

class ClassifyResponse(_message.Message):
    __slots__ = ("results", "model_name", "model_version")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[Classification]
    model_name: str
    model_version: str
    def __init__(self, results: _Optional[_Iterable[_Union[Classification, _Mapping]]] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ...) -> None: ...

class HeatmapGrid(_message.Message):
    __slots__ = ("scale_y", "scale_x", "offset_y", "offset_x")
    SCALE_Y_FIELD_NUMBER: _ClassVar[int]
    SCALE_X_FIELD_NUMBER: _ClassVar[int]
    OFFSET_Y_FIELD_NUMBER: _ClassVar[int]
    OFFSET_X_FIELD_NUMBER: _ClassVar[int]
    scale_y: float
    scale_x: float
    offset_y: float
    offset_x: float
    def __init__(self, scale_y: _Optional[float] = ..., scale_x: _Optional[float] = ..., offset_y: _Optional[float] = ..., offset_x: _Optional[float] = ...) -> None: ...

class ExplainOptions(_message.Message):
    __slots__ = ("method", "target_class", "layer")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    TARGET_CLASS_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    method: CamMethod
    target_class: int
    layer: str
    def __init__(self, method: _Optional[_Union[CamMethod, str]] = ..., target_class: _Optional[int] = ..., layer: _Optional[str] = ...) -> None: ...

class Tiling(_message.Message):
    __slots__ = ("mode", "scale", "overlap", "min_area", "spacing_mm")
    MODE_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    OVERLAP_FIELD_NUMBER: _ClassVar[int]
    MIN_AREA_FIELD_NUMBER: _ClassVar[int]
    SPACING_MM_FIELD_NUMBER: _ClassVar[int]
    mode: WholeMode
    scale: float
    overlap: float
    min_area: int
    spacing_mm: float
    def __init__(self, mode: _Optional[_Union[WholeMode, str]] = ..., scale: _Optional[float] = ..., overlap: _Optional[float] = ..., min_area: _Optional[int] = ..., spacing_mm: _Optional[float] = ...) -> None: ...

class Lesion(_message.Message):
    __slots__ = ("score", "area", "y0", "x0", "y1", "x1", "centroid_y", "centroid_x")
    SCORE_FIELD_NUMBER: _ClassVar[int]
    AREA_FIELD_NUMBER: _ClassVar[int]
    Y0_FIELD_NUMBER: _ClassVar[int]
    X0_FIELD_NUMBER: _ClassVar[int]
    Y1_FIELD_NUMBER: _ClassVar[int]
    X1_FIELD_NUMBER: _ClassVar[int]
    CENTROID_Y_FIELD_NUMBER: _ClassVar[int]
    CENTROID_X_FIELD_NUMBER: _ClassVar[int]
    score: float
    area: int
    y0: int
    x0: int
    y1: int
    x1: int
    centroid_y: float
    centroid_x: float
    def __init__(self, score: _Optional[float] = ..., area: _Optional[int] = ..., y0: _Optional[int] = ..., x0: _Optional[int] = ..., y1: _Optional[int] = ..., x1: _Optional[int] = ..., centroid_y: _Optional[float] = ..., centroid_x: _Optional[float] = ...) -> None: ...

class WholeImage(_message.Message):
    __slots__ = ("scale", "tiles", "skipped", "tissue_fraction", "padded", "score", "lesions", "note")
    SCALE_FIELD_NUMBER: _ClassVar[int]
    TILES_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    TISSUE_FRACTION_FIELD_NUMBER: _ClassVar[int]
    PADDED_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    LESIONS_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    scale: float
    tiles: int
    skipped: int
    tissue_fraction: float
    padded: bool
    score: float
    lesions: _containers.RepeatedCompositeFieldContainer[Lesion]
    note: str
    def __init__(self, scale: _Optional[float] = ..., tiles: _Optional[int] = ..., skipped: _Optional[int] = ..., tissue_fraction: _Optional[float] = ..., padded: _Optional[bool] = ..., score: _Optional[float] = ..., lesions: _Optional[_Iterable[_Union[Lesion, _Mapping]]] = ..., note: _Optional[str] = ...) -> None: ...

class ExplainRequest(_message.Message):
    __slots__ = ("model", "images", "options", "encoding", "overlay_png", "tiling", "heatmap_resolution")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_PNG_FIELD_NUMBER: _ClassVar[int]
    TILING_FIELD_NUMBER: _ClassVar[int]
    HEATMAP_RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    images: _containers.RepeatedCompositeFieldContainer[Image]
    options: ExplainOptions
    encoding: HeatmapEncoding
    overlay_png: bool
    tiling: Tiling
    heatmap_resolution: HeatmapResolution
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ..., images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., options: _Optional[_Union[ExplainOptions, _Mapping]] = ..., encoding: _Optional[_Union[HeatmapEncoding, str]] = ..., overlay_png: _Optional[bool] = ..., tiling: _Optional[_Union[Tiling, _Mapping]] = ..., heatmap_resolution: _Optional[_Union[HeatmapResolution, str]] = ...) -> None: ...

class Heatmap(_message.Message):
    __slots__ = ("data", "shape", "encoding", "overlay_png", "classification", "target_class", "layer", "whole", "grid")
    DATA_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_PNG_FIELD_NUMBER: _ClassVar[int]
    CLASSIFICATION_FIELD_NUMBER: _ClassVar[int]
    TARGET_CLASS_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    WHOLE_FIELD_NUMBER: _ClassVar[int]
    GRID_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    shape: _containers.RepeatedScalarFieldContainer[int]
    encoding: HeatmapEncoding
    overlay_png: bytes
    classification: Classification
    target_class: int
    layer: str
    whole: WholeImage
    grid: HeatmapGrid
    def __init__(self, data: _Optional[bytes] = ..., shape: _Optional[_Iterable[int]] = ..., encoding: _Optional[_Union[HeatmapEncoding, str]] = ..., overlay_png: _Optional[bytes] = ..., classification: _Optional[_Union[Classification, _Mapping]] = ..., target_class: _Optional[int] = ..., layer: _Optional[str] = ..., whole: _Optional[_Union[WholeImage, _Mapping]] = ..., grid: _Optional[_Union[HeatmapGrid, _Mapping]] = ...) -> None: ...

class ExplainResponse(_message.Message):
    __slots__ = ("heatmaps", "model_name", "model_version", "engine")
    HEATMAPS_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    heatmaps: _containers.RepeatedCompositeFieldContainer[Heatmap]
    model_name: str
    model_version: str
    engine: str
    def __init__(self, heatmaps: _Optional[_Iterable[_Union[Heatmap, _Mapping]]] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., engine: _Optional[str] = ...) -> None: ...

class ThresholdRule(_message.Message):
    __slots__ = ("kind", "value")
    KIND_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    kind: ThresholdKind
    value: float
    def __init__(self, kind: _Optional[_Union[ThresholdKind, str]] = ..., value: _Optional[float] = ...) -> None: ...

class SegmentRequest(_message.Message):
    __slots__ = ("model", "images", "options", "threshold", "gate", "largest_component", "truth_masks", "overlay_png", "mask_encodings", "refine", "tta", "decision_threshold", "no_recipe", "tiling", "heatmap_resolution")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    GATE_FIELD_NUMBER: _ClassVar[int]
    LARGEST_COMPONENT_FIELD_NUMBER: _ClassVar[int]
    TRUTH_MASKS_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_PNG_FIELD_NUMBER: _ClassVar[int]
    MASK_ENCODINGS_FIELD_NUMBER: _ClassVar[int]
    REFINE_FIELD_NUMBER: _ClassVar[int]
    TTA_FIELD_NUMBER: _ClassVar[int]
    DECISION_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    NO_RECIPE_FIELD_NUMBER: _ClassVar[int]
    TILING_FIELD_NUMBER: _ClassVar[int]
    HEATMAP_RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    images: _containers.RepeatedCompositeFieldContainer[Image]
    options: ExplainOptions
    threshold: ThresholdRule
    gate: bool
    largest_component: bool
    truth_masks: _containers.RepeatedCompositeFieldContainer[Image]
    overlay_png: bool
    mask_encodings: _containers.RepeatedScalarFieldContainer[MaskEncoding]
    refine: Refinement
    tta: int
    decision_threshold: float
    no_recipe: bool
    tiling: Tiling
    heatmap_resolution: HeatmapResolution
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ..., images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., options: _Optional[_Union[ExplainOptions, _Mapping]] = ..., threshold: _Optional[_Union[ThresholdRule, _Mapping]] = ..., gate: _Optional[bool] = ..., largest_component: _Optional[bool] = ..., truth_masks: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., overlay_png: _Optional[bool] = ..., mask_encodings: _Optional[_Iterable[_Union[MaskEncoding, str]]] = ..., refine: _Optional[_Union[Refinement, str]] = ..., tta: _Optional[int] = ..., decision_threshold: _Optional[float] = ..., no_recipe: _Optional[bool] = ..., tiling: _Optional[_Union[Tiling, _Mapping]] = ..., heatmap_resolution: _Optional[_Union[HeatmapResolution, str]] = ...) -> None: ...

class SegmentChunk(_message.Message):
    __slots__ = ("request", "id", "data")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    request: SegmentRequest
    id: str
    data: bytes
    def __init__(self, request: _Optional[_Union[SegmentRequest, _Mapping]] = ..., id: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class Mask(_message.Message):
    __slots__ = ("png", "packed_bits", "rle", "shape", "area", "threshold", "threshold_value", "gated", "dice", "classification", "overlay_png", "dicom_seg", "whole", "heatmap")
    PNG_FIELD_NUMBER: _ClassVar[int]
    PACKED_BITS_FIELD_NUMBER: _ClassVar[int]
    RLE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    AREA_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_VALUE_FIELD_NUMBER: _ClassVar[int]
    GATED_FIELD_NUMBER: _ClassVar[int]
    DICE_FIELD_NUMBER: _ClassVar[int]
    CLASSIFICATION_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_PNG_FIELD_NUMBER: _ClassVar[int]
    DICOM_SEG_FIELD_NUMBER: _ClassVar[int]
    WHOLE_FIELD_NUMBER: _ClassVar[int]
    HEATMAP_FIELD_NUMBER: _ClassVar[int]
    png: bytes
    packed_bits: bytes
    rle: _containers.RepeatedScalarFieldContainer[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    area: int
    threshold: ThresholdRule
    threshold_value: float
    gated: bool
    dice: float
    classification: Classification
    overlay_png: bytes
    dicom_seg: bytes
    whole: WholeImage
    heatmap: Heatmap
    def __init__(self, png: _Optional[bytes] = ..., packed_bits: _Optional[bytes] = ..., rle: _Optional[_Iterable[int]] = ..., shape: _Optional[_Iterable[int]] = ..., area: _Optional[int] = ..., threshold: _Optional[_Union[ThresholdRule, _Mapping]] = ..., threshold_value: _Optional[float] = ..., gated: _Optional[bool] = ..., dice: _Optional[float] = ..., classification: _Optional[_Union[Classification, _Mapping]] = ..., overlay_png: _Optional[bytes] = ..., dicom_seg: _Optional[bytes] = ..., whole: _Optional[_Union[WholeImage, _Mapping]] = ..., heatmap: _Optional[_Union[Heatmap, _Mapping]] = ...) -> None: ...

class SegmentResponse(_message.Message):
    __slots__ = ("masks", "model_name", "model_version", "mean_dice", "recipe")
    MASKS_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MEAN_DICE_FIELD_NUMBER: _ClassVar[int]
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    masks: _containers.RepeatedCompositeFieldContainer[Mask]
    model_name: str
    model_version: str
    mean_dice: float
    recipe: bool
    def __init__(self, masks: _Optional[_Iterable[_Union[Mask, _Mapping]]] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., mean_dice: _Optional[float] = ..., recipe: _Optional[bool] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelVersions(_message.Message):
    __slots__ = ("name", "versions", "latest")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    LATEST_FIELD_NUMBER: _ClassVar[int]
    name: str
    versions: _containers.RepeatedScalarFieldContainer[str]
    latest: str
    def __init__(self, name: _Optional[str] = ..., versions: _Optional[_Iterable[str]] = ..., latest: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelVersions]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelVersions, _Mapping]]] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "architecture", "input_size", "input_channels", "classes", "gradcam_layer", "layers", "metrics", "providers", "one_pass_cam", "recipe", "distilled", "source", "config", "gradients_unavailable", "scale", "mm_per_model_pixel")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    INPUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    INPUT_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    GRADCAM_LAYER_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    ONE_PASS_CAM_FIELD_NUMBER: _ClassVar[int]
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    DISTILLED_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    GRADIENTS_UNAVAILABLE_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    MM_PER_MODEL_PIXEL_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    architecture: str
    input_size: int
    input_channels: int
    classes: _containers.RepeatedScalarFieldContainer[str]
    gradcam_layer: str
    layers: _containers.RepeatedScalarFieldContainer[str]
    metrics: _containers.ScalarMap[str, float]
    providers: _containers.RepeatedScalarFieldContainer[str]
    one_pass_cam: bool
    recipe: str
    distilled: bool
    source: str
    config: str
    gradients_unavailable: str
    scale: float
    mm_per_model_pixel: float
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., architecture: _Optional[str] = ..., input_size: _Optional[int] = ..., input_channels: _Optional[int] = ..., classes: _Optional[_Iterable[str]] = ..., gradcam_layer: _Optional[str] = ..., layers: _Optional[_Iterable[str]] = ..., metrics: _Optional[_Mapping[str, float]] = ..., providers: _Optional[_Iterable[str]] = ..., one_pass_cam: _Optional[bool] = ..., recipe: _Optional[str] = ..., distilled: _Optional[bool] = ..., source: _Optional[str] = ..., config: _Optional[str] = ..., gradients_unavailable: _Optional[str] = ..., scale: _Optional[float] = ..., mm_per_model_pixel: _Optional[float] = ...) -> None: ...

class SubmitJobRequest(_message.Message):
    __slots__ = ("kind", "model", "data", "split", "options", "threshold", "gate", "largest_component", "heatmaps", "chunk_size", "thresholds", "filters", "epochs", "volumes", "axis", "whole", "scale", "overlap", "output", "windowing")
    class Whole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        WHOLE_UNSPECIFIED: _ClassVar[SubmitJobRequest.Whole]
        WHOLE_AUTO: _ClassVar[SubmitJobRequest.Whole]
        WHOLE_ALWAYS: _ClassVar[SubmitJobRequest.Whole]
        WHOLE_NEVER: _ClassVar[SubmitJobRequest.Whole]
    WHOLE_UNSPECIFIED: SubmitJobRequest.Whole
    WHOLE_AUTO: SubmitJobRequest.Whole
    WHOLE_ALWAYS: SubmitJobRequest.Whole
    WHOLE_NEVER: SubmitJobRequest.Whole
    KIND_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    GATE_FIELD_NUMBER: _ClassVar[int]
    LARGEST_COMPONENT_FIELD_NUMBER: _ClassVar[int]
    HEATMAPS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLDS_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    VOLUMES_FIELD_NUMBER: _ClassVar[int]
    AXIS_FIELD_NUMBER: _ClassVar[int]
    WHOLE_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    OVERLAP_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    WINDOWING_FIELD_NUMBER: _ClassVar[int]
    kind: JobKind
    model: ModelRef
    data: str
    split: str
    options: ExplainOptions
    threshold: ThresholdRule
    gate: bool
    largest_component: bool
    heatmaps: bool
    chunk_size: int
    thresholds: _containers.RepeatedScalarFieldContainer[float]
    filters: _containers.RepeatedScalarFieldContainer[str]
    epochs: int
    volumes: _containers.RepeatedCompositeFieldContainer[VolumePair]
    axis: int
    whole: SubmitJobRequest.Whole
    scale: float
    overlap: float
    output: str
    windowing: str
    def __init__(self, kind: _Optional[_Union[JobKind, str]] = ..., model: _Optional[_Union[ModelRef, _Mapping]] = ..., data: _Optional[str] = ..., split: _Optional[str] = ..., options: _Optional[_Union[ExplainOptions, _Mapping]] = ..., threshold: _Optional[_Union[ThresholdRule, _Mapping]] = ..., gate: _Optional[bool] = ..., largest_component: _Optional[bool] = ..., heatmaps: _Optional[bool] = ..., chunk_size: _Optional[int] = ..., thresholds: _Optional[_Iterable[float]] = ..., filters: _Optional[_Iterable[str]] = ..., epochs: _Optional[int] = ..., volumes: _Optional[_Iterable[_Union[VolumePair, _Mapping]]] = ..., axis: _Optional[int] = ..., whole: _Optional[_Union[SubmitJobRequest.Whole, str]] = ..., scale: _Optional[float] = ..., overlap: _Optional[float] = ..., output: _Optional[str] = ..., windowing: _Optional[str] = ...) -> None: ...

class VolumePair(_message.Message):
    __slots__ = ("image", "label")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    image: str
    label: str
    def __init__(self, image: _Optional[str] = ..., label: _Optional[str] = ...) -> None: ...

class JobRef(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job_id", "kind", "state", "parts_done", "parts", "images_done", "images", "reason", "output", "mean_dice")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PARTS_DONE_FIELD_NUMBER: _ClassVar[int]
    PARTS_FIELD_NUMBER: _ClassVar[int]
    IMAGES_DONE_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    MEAN_DICE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    kind: JobKind
    state: JobState
    parts_done: int
    parts: int
    images_done: int
    images: int
    reason: str
    output: str
    mean_dice: float
    def __init__(self, job_id: _Optional[str] = ..., kind: _Optional[_Union[JobKind, str]] = ..., state: _Optional[_Union[JobState, str]] = ..., parts_done: _Optional[int] = ..., parts: _Optional[int] = ..., images_done: _Optional[int] = ..., images: _Optional[int] = ..., reason: _Optional[str] = ..., output: _Optional[str] = ..., mean_dice: _Optional[float] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ...) -> None: ...
