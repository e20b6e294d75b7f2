"""Segment Anything: image embeddings and prompt -> mask, on top of segment-anything 1.0.

The image encoder is the expensive part (about 15 s for a 512 px tile with
vit_b on a 2-core CPU); the prompt encoder and mask decoder take about 0.1 s
in PyTorch and half that in ONNX Runtime. So :meth:`SamEngine.embed` runs once
per tile (ahead of the annotator, see :mod:`ml_backend.precompute`) and
:meth:`SamEngine.segment` runs per click on a cached :class:`Embedding`.
"""

from __future__ import annotations

import hashlib
import io
import threading
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import onnxruntime
import torch
from segment_anything import sam_model_registry
from segment_anything.modeling import Sam
from segment_anything.utils.onnx import SamOnnxModel
from segment_anything.utils.transforms import ResizeLongestSide

from ml_backend.errors import BadRequestError, SamUnavailableError

SamType = Literal["vit_b", "vit_l", "vit_h"]
SAM_TYPES: tuple[SamType, ...] = ("vit_b", "vit_l", "vit_h")
#: Dtype of cached embeddings: half the size of float32, no visible change in masks.
EMBEDDING_DTYPE = np.float16
#: geolabel's pixel coordinates are continuous (pixel (0, 0) spans 0..1, centre 0.5); SAM's prompt
#: encoder takes pixel indices and adds 0.5 itself, so prompts are shifted by half a pixel first.
PIXEL_CENTRE = 0.5
#: Point labels of SAM's prompt encoder beyond positive (1) / negative (0): padding, box corners.
PAD_LABEL, BOX_TOP_LEFT, BOX_BOTTOM_RIGHT = -1, 2, 3


@dataclass(frozen=True)
class Embedding:
    """SAM image embedding of one tile.

    Attributes:
        features: ``(256, 64, 64)`` image-encoder output, stored as float16.
        original_size: ``(height, width)`` of the tile image.
        input_size: ``(height, width)`` of the image after resizing its longest side to 1024.
    """

    features: npt.NDArray[np.float16]
    original_size: tuple[int, int]
    input_size: tuple[int, int]


@dataclass(frozen=True)
class Prompt:
    """What the annotator clicked, in tile pixel coordinates.

    Attributes:
        points: ``(N, 2)`` points as ``(col, row)`` = ``(x, y)`` pixels.
        labels: ``(N,)`` 1 for a positive point (object), 0 for a negative one (background).
        box: ``(x0, y0, x1, y1)`` pixels, or None.
    """

    points: npt.NDArray[np.float64]
    labels: npt.NDArray[np.int64]
    box: tuple[float, float, float, float] | None = None

    def __post_init__(self) -> None:
        if len(self.points) != len(self.labels):
            raise BadRequestError("each prompt point needs one label (positive or negative)")
        if len(self.points) == 0 and self.box is None:
            raise BadRequestError("the prompt has no point and no box")


@dataclass(frozen=True)
class Segmentation:
    """SAM's answer: a boolean ``(height, width)`` mask and its predicted IoU."""

    mask: npt.NDArray[np.bool_]
    score: float


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; otherwise the named torch device.

    Raises:
        SamUnavailableError: if the device does not exist here.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SamUnavailableError(f"sam.device = {device!r} but no CUDA GPU is visible; use 'auto' or 'cpu'")
    return torch.device(device)


def checkpoint_identity(model_type: str, checkpoint: Path) -> str:
    """Identity of a checkpoint for cache keys: model type and BLAKE2b of the file's bytes."""
    with open(checkpoint, "rb") as handle:
        digest = hashlib.file_digest(handle, "blake2b").hexdigest()
    return f"{model_type}-{digest[:16]}"


def load_sam(model_type: str, checkpoint: Path, device: str = "auto") -> SamEngine:
    """Build SAM ``model_type`` and load its weights from ``checkpoint``.

    Raises:
        SamUnavailableError: unknown type, missing or unreadable file, or weights of another model type.
    """
    if model_type not in SAM_TYPES:
        raise SamUnavailableError(f"sam.model_type = {model_type!r}; use one of {', '.join(SAM_TYPES)}")
    if not checkpoint.is_file():
        raise SamUnavailableError(
            f"SAM checkpoint {checkpoint} not found; download sam_{model_type}_*.pth from the "
            "segment-anything releases and set sam.checkpoint to its path"
        )
    target = resolve_device(device)
    try:
        state = _read_state(checkpoint)
    except Exception as exc:  # pickle, zip and torch errors all mean: not a checkpoint
        raise SamUnavailableError(
            f"{checkpoint} is not a readable PyTorch checkpoint ({type(exc).__name__})"
        ) from None
    model = sam_model_registry[model_type](checkpoint=None)
    try:
        model.load_state_dict(state, assign=True)  # the random init is dropped, not kept beside the weights
    except (RuntimeError, TypeError, AttributeError):
        raise SamUnavailableError(
            f"{checkpoint} does not hold SAM {model_type} weights; check sam.model_type "
            "(vit_b: sam_vit_b_01ec64.pth, vit_l: sam_vit_l_0b3195.pth, vit_h: sam_vit_h_4b8939.pth)"
        ) from None
    return SamEngine(model, model_type, checkpoint_identity(model_type, checkpoint), target)


def _read_state(checkpoint: Path) -> object:
    """The checkpoint's tensors, memory-mapped when the file allows (workers then share the pages)."""
    try:
        return torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # files from torch < 1.6 (not zip) cannot be mapped
        return torch.load(checkpoint, map_location="cpu", weights_only=True)


class SamEngine:
    """A loaded SAM model on one device.

    Args:
        model: the SAM network (weights loaded).
        model_type: ``vit_b``, ``vit_l`` or ``vit_h``.
        identity: checkpoint identity used in embedding cache keys.
        device: where the network runs.
    """

    def __init__(self, model: Sam, model_type: str, identity: str, device: torch.device) -> None:
        self.model = model.to(device).eval()
        self.model_type = model_type
        self.identity = identity
        self.device = device
        self.transform = ResizeLongestSide(model.image_encoder.img_size)
        self._encoder_lock = threading.Lock()  # one image encoding at a time: it uses every core
        # On a CPU the decoder runs in ONNX Runtime (about 2x faster than PyTorch); on a GPU PyTorch is fast.
        self.decoder: PromptDecoder = (
            OnnxDecoder.export(self.model) if device.type == "cpu" else TorchDecoder(self.model)
        )

    def embed(self, image: npt.NDArray[np.uint8]) -> Embedding:
        """Run the image encoder on an ``(height, width, 3)`` uint8 RGB image.

        Raises:
            BadRequestError: if the image is not ``(height, width, 3)`` uint8.
        """
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise BadRequestError(f"SAM needs an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
        resized = self.transform.apply_image(image)
        pixels = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None]
        with self._encoder_lock, torch.inference_mode():
            features = self.model.image_encoder(self.model.preprocess(pixels.float()))
        return Embedding(
            features=features[0].cpu().numpy().astype(EMBEDDING_DTYPE),
            original_size=(int(image.shape[0]), int(image.shape[1])),
            input_size=(int(resized.shape[0]), int(resized.shape[1])),
        )

    def segment(self, embedding: Embedding, prompt: Prompt) -> Segmentation:
        """The best mask for ``prompt`` on the tile of ``embedding`` (prompt decoder only).

        A single point is ambiguous (a roof or the whole building?): SAM proposes three masks and
        the one with the highest predicted IoU is kept. Several points or a box give one mask.

        Raises:
            BadRequestError: if a point or the box lies outside the image.
        """
        height, width = embedding.original_size
        _check_inside(prompt, width, height)
        coords, labels = self._encode_prompt(prompt, embedding)
        low_res, iou = self.decoder(embedding.features, coords, labels)
        # A single point is ambiguous: masks 1..3 are SAM's proposals for it; otherwise mask 0 is the answer.
        multimask = prompt.box is None and len(prompt.points) == 1
        best = 1 + int(np.argmax(iou[1:])) if multimask else 0
        with torch.inference_mode():
            logits = self._upscale(torch.from_numpy(low_res[best]), embedding)
        mask = (logits > self.model.mask_threshold).numpy()
        return Segmentation(mask=mask, score=float(iou[best]))

    def _encode_prompt(
        self, prompt: Prompt, embedding: Embedding
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Points and box corners in SAM's 1024 px input frame, with SAM's point labels.

        With no box, a padding point ends the list, as SAM's prompt encoder does itself.
        """
        points = [self.transform.apply_coords(prompt.points - PIXEL_CENTRE, embedding.original_size)]
        labels = [prompt.labels.astype(np.float32)]
        if prompt.box is None:
            points.append(np.zeros((1, 2)))
            labels.append(np.array([PAD_LABEL], dtype=np.float32))
        else:
            corners = np.asarray([prompt.box], dtype=np.float64) - PIXEL_CENTRE
            box = self.transform.apply_boxes(corners, embedding.original_size)
            points.append(box.reshape(2, 2))
            labels.append(np.array([BOX_TOP_LEFT, BOX_BOTTOM_RIGHT], dtype=np.float32))
        return np.concatenate(points).astype(np.float32), np.concatenate(labels)

    def _upscale(self, low_res: torch.Tensor, embedding: Embedding) -> torch.Tensor:
        """Low-resolution (256 x 256) logits -> tile-sized logits.

        SAM's own post-processing goes 256 -> 1024 -> crop -> tile size; cropping the padding at
        256 and resizing once gives the same mask at a quarter of the cost.
        """
        input_h, input_w = embedding.input_size
        side = low_res.shape[-1]
        scale = side / self.model.image_encoder.img_size
        crop = low_res[: round(input_h * scale), : round(input_w * scale)]
        return torch.nn.functional.interpolate(
            crop[None, None], size=embedding.original_size, mode="bilinear", align_corners=False
        )[0, 0]


class PromptDecoder(ABC):
    """SAM's prompt encoder + mask decoder on one embedding; subclasses run one batch of one."""

    def __call__(
        self,
        features: npt.NDArray[np.float16],
        coords: npt.NDArray[np.float32],
        labels: npt.NDArray[np.float32],
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """The four ``(256, 256)`` low-resolution mask logits and their four predicted IoUs.

        Args:
            features: ``(256, 64, 64)`` image embedding.
            coords: ``(N, 2)`` points in SAM's 1024 px input frame.
            labels: ``(N,)`` SAM point labels (1, 0, padding, box corners).

        Mask 0 answers several prompts; masks 1..3 are the proposals for one ambiguous point.
        """
        batch = tuple(np.asarray(a, dtype=np.float32)[None] for a in (features, coords, labels))
        masks, iou = self._run(*batch)
        return masks[0], iou[0]

    @abstractmethod
    def _run(
        self,
        features: npt.NDArray[np.float32],
        coords: npt.NDArray[np.float32],
        labels: npt.NDArray[np.float32],
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """``(1, 4, 256, 256)`` logits and ``(1, 4)`` IoUs for float32 inputs with a batch axis of one."""


class _DecoderGraph(torch.nn.Module):
    """Points -> all four masks and IoUs, with no mask prompt: the graph both decoders run."""

    def __init__(self, model: Sam) -> None:
        super().__init__()
        self.onnx = SamOnnxModel(model, return_single_mask=False)  # its point/mask embedding is tracing-safe
        self.model = model

    def forward(
        self, features: torch.Tensor, coords: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        sparse = self.onnx._embed_points(coords, labels)
        dense = self.model.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        masks, iou = self.model.mask_decoder.predict_masks(
            image_embeddings=features,
            image_pe=self.model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
        )
        return masks, iou


class TorchDecoder(PromptDecoder):
    """The decoder in PyTorch, on the model's device (GPUs)."""

    def __init__(self, model: Sam) -> None:
        self.graph = _DecoderGraph(model).eval()
        self.device = next(model.parameters()).device

    def _run(
        self,
        features: npt.NDArray[np.float32],
        coords: npt.NDArray[np.float32],
        labels: npt.NDArray[np.float32],
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        with torch.inference_mode():
            masks, iou = self.graph(
                *(torch.from_numpy(a).to(self.device) for a in (features, coords, labels))
            )
        return masks.float().cpu().numpy(), iou.float().cpu().numpy()


class OnnxDecoder(PromptDecoder):
    """The decoder exported once (in memory, about 1 s) and run by ONNX Runtime on the CPU."""

    def __init__(self, session: onnxruntime.InferenceSession) -> None:
        self.session = session

    @classmethod
    def export(cls, model: Sam) -> OnnxDecoder:
        """Trace ``model``'s prompt encoder and mask decoder to ONNX and open it in ONNX Runtime."""
        graph = _DecoderGraph(model).eval()
        sample = (torch.zeros(1, 256, 64, 64), torch.zeros(1, 2, 2), torch.tensor([[1.0, PAD_LABEL]]))
        buffer = io.BytesIO()
        with warnings.catch_warnings():  # tracer warnings about Python ints in SAM's code: harmless here
            warnings.simplefilter("ignore")
            torch.onnx.export(
                graph, sample, buffer, dynamo=False,  # type: ignore[arg-type]  # BytesIO works
                opset_version=17,
                input_names=["features", "coords", "labels"], output_names=["masks", "iou"],
                dynamic_axes={"coords": {1: "points"}, "labels": {1: "points"}},
            )  # fmt: skip
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.log_severity_level = 3  # errors only
        session = onnxruntime.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
        return cls(session)

    def _run(
        self,
        features: npt.NDArray[np.float32],
        coords: npt.NDArray[np.float32],
        labels: npt.NDArray[np.float32],
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        masks, iou = self.session.run(None, {"features": features, "coords": coords, "labels": labels})
        return masks, iou


def _check_inside(prompt: Prompt, width: int, height: int) -> None:
    xy = prompt.points
    if len(xy) and ((xy < 0).any() or (xy[:, 0] > width).any() or (xy[:, 1] > height).any()):
        raise BadRequestError(f"a prompt point lies outside the {width}x{height} image")
    if prompt.box is not None:
        x0, y0, x1, y1 = prompt.box
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            raise BadRequestError(
                f"the prompt box {prompt.box} is empty or outside the {width}x{height} image"
            )
