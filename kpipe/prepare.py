"""``kpipe prepare``: raw samples -> per-sample ``.npy`` files or HDF5 shards + ``manifest.json``."""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from joblib import Parallel, delayed

from kpipe._staging import check_output_folder, staged_dataset
from kpipe.errors import InputError, SplitError, StoreError
from kpipe.ingest import COLOR_MODES, ImageOptions, RawSample, infer_image_options, load_sample, scan
from kpipe.manifest import MANIFEST_NAME, Manifest
from kpipe.split import parse_split, stratified_split
from kpipe.storage import FORMATS, check_storage_options  # noqa: F401 - FORMATS re-exported
from kpipe.storage.npy import write_npy_sample
from kpipe.weights import read_weights_file, weights_for_samples

_CHUNK = 64  # samples per joblib task: amortizes dispatch over many small files


@dataclasses.dataclass
class PrepareResult:
    """What `prepare` produced.

    Attributes:
        manifest: The written `Manifest` (``manifest.path`` is set).
        num_skipped: Number of raw inputs skipped (listed in ``manifest.skipped``).
    """

    manifest: Manifest
    num_skipped: int

    def summary(self) -> str:
        """One line for people, e.g. ``Prepared 1797 samples in 10 classes: ...``."""
        m = self.manifest
        parts = ", ".join(f"{p} {len(ids)}" for p, ids in m.partition.items())
        line = f"Prepared {m.num_samples} samples in {m.num_classes} classes: {parts} -> {m.path}"
        if self.num_skipped:
            line += f" ({self.num_skipped} input{'s' if self.num_skipped != 1 else ''} skipped, see `skipped` in the manifest)"
        return line


def parse_image_size(text: str | Sequence[int] | None) -> tuple[int, int] | None:
    """Parse ``"64x48"`` (height x width) into ``(64, 48)``; `None` stays `None`.

    Raises:
        InputError: If the text is not two positive integers joined by ``x``.
    """
    if text is None:
        return None
    try:
        parts = [int(p) for p in text.lower().split("x")] if isinstance(text, str) else [int(p) for p in text]
    except ValueError:
        parts = []
    if len(parts) != 2 or min(parts) <= 0:
        raise InputError(f"`image_size` must be HEIGHTxWIDTH in pixels, e.g. 64x64. Received: image_size={text!r}")
    return parts[0], parts[1]


def _convert_chunk(samples: Sequence[RawSample], layout: str, image_options: ImageOptions | None,
                   shape: tuple[int, ...], dtype: str, data_dir: str | None) -> list[tuple[str, Any]]:
    """Load and check a chunk of samples; returns ``(id, result)`` each.

    With ``data_dir`` each sample is written there as ``<ID>.npy`` and the
    result is `None`; without, the result is the array (for a writer in the
    main process, e.g. HDF5 shards). A sample that fails gives its error
    message (a `str`) as result.
    """
    results: list[tuple[str, Any]] = []
    for s in samples:
        try:
            arr = load_sample(s, layout, image_options)
            if arr.shape != shape or arr.dtype != np.dtype(dtype):
                raise ValueError(f"array is {arr.dtype}{list(arr.shape)}, the dataset's (most common) is "
                                 f"{dtype}{list(shape)}")
            if data_dir is None:
                results.append((s.id, arr))
                continue
            write_npy_sample(data_dir, s.id, arr)
            results.append((s.id, None))
        except StoreError:
            raise  # writing the output failed (disk full...): never an input's fault; prepare stops
        except (OSError, ValueError, SyntaxError, EOFError) as e:  # PIL raises SyntaxError on some corrupt files
            results.append((s.id, f"unreadable: {e}" if not isinstance(e, ValueError) else str(e)))
        except Exception as e:  # noqa: BLE001 - a bad file must never crash the run
            results.append((s.id, f"unreadable: {type(e).__name__}: {e}"))
    return results


def prepare(
    raw: str | os.PathLike,
    out: str | os.PathLike,
    *,
    layout: str = "auto",
    split: str | Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    image_size: str | Sequence[int] | None = None,
    color_mode: str | None = None,
    label_column: str = "label",
    id_column: str | None = None,
    weight_column: str | None = None,
    weights: str | os.PathLike | None = None,
    format: str = "npy",  # noqa: A002 - the field's term
    shard_size: int | None = None,
    compression: str | None = "none",
    n_jobs: int = -1,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> PrepareResult:
    """Convert raw samples into a prepared dataset.

    Writes ``OUT/data/<ID>.npy`` (one file per sample; ``format="npy"``) or
    ``OUT/shards/shard-00000.h5``, ... (``format="hdf5"``), and ``OUT/manifest.json``.
    Everything is built in a sibling staging folder (``.OUT.partial-*``) and
    moved into place at the end, so a killed run leaves ``OUT`` untouched, and
    every file is written under a temporary name and then renamed.

    Args:
        raw: A folder of class sub-folders (images or ``.npy``), or a ``.csv`` file.
        out: Output folder.
        layout: ``"auto"``, ``"images"``, ``"npy"`` or ``"csv"``.
        split: Train, validation, test fractions, e.g. ``"0.8,0.1,0.1"``.
        seed: Seed of the stratified split.
        image_size: ``"HxW"`` or ``(height, width)`` to resize images to;
            default keeps the size (images of another size are skipped).
        color_mode: ``"grayscale"``, ``"rgb"`` or ``"rgba"``; default
            inferred from the first image.
        label_column: CSV column of the class. Defaults to ``"label"``.
        id_column: CSV column of sample IDs; row numbers if `None`.
        weight_column: CSV column of per-sample weights (finite, >= 0), kept
            out of the features and stored as ``manifest.sample_weights``.
        weights: A file of per-sample weights, CSV rows ``ID,weight``
            (header optional) or a JSON object; every sample needs one.
        format: Storage format: ``"npy"`` (one file per sample) or ``"hdf5"``
            (shards laid out partition by partition). Defaults to ``"npy"``.
        shard_size: Samples per HDF5 shard. Defaults to about 1 GiB of
            sample data per shard.
        compression: HDF5 compression: ``"none"`` (contiguous, read by memory
            map or ``preadv`` at the dataset's file offset: the fastest),
            ``"gzip"`` or ``"lzf"`` (chunked per sample, read through h5py).
            Defaults to ``"none"``.
        n_jobs: Parallel workers, as joblib (``-1``: all cores).
        overwrite: Replace ``out`` if it exists and is a dataset kpipe wrote
            (its ``.kpipe-dataset`` marker, see `kpipe._staging`); never the
            working directory, a home folder, the input or a folder above them.
        progress: Called with the number of samples done since the last call.
        on_start: Called once with the number of samples to convert.

    Returns:
        A `PrepareResult` with the manifest and the number of skipped inputs.

    Raises:
        InputError: If ``raw`` is missing, empty, has no usable sample, or an
            option is invalid.
        SplitError: If a class is too small to stratify.
        OutputExistsError: If ``out`` exists and ``overwrite`` is False, or
            ``overwrite`` is True but ``out`` is not a dataset kpipe wrote.
        StoreError: If the output cannot be written (disk full, read-only file
            system...); ``out`` is left as it was.

    Example:
        >>> result = prepare("sample_data/digits", "prepared")
        >>> print(result.summary())
        Prepared 1797 samples in 10 classes: train 1437, validation 180, test 180 -> ...
    """
    raw, out = Path(raw), Path(out)
    fractions = parse_split(split)
    size = parse_image_size(image_size)
    if color_mode is not None and color_mode not in COLOR_MODES:
        raise InputError(f"`color_mode` must be one of {', '.join(COLOR_MODES)}. Received: color_mode={color_mode!r}")
    compression = check_storage_options(format, shard_size, compression)
    if not isinstance(n_jobs, int) or n_jobs == 0:
        raise InputError(f"`n_jobs` must be a non-zero integer (-1 for all cores). Received: n_jobs={n_jobs!r}")
    check_output_folder(out, raw, overwrite=overwrite, what="input")

    found = scan(raw, layout, label_column=label_column, id_column=id_column, weight_column=weight_column)
    file_weights = read_weights_file(weights) if weights is not None else None  # per-sample weights (issue 4)
    weights_for_samples([], all_ids=[s.id for s in found.samples], column=found.weights, file=file_weights)
    skipped = list(found.skipped)
    samples = found.samples

    # Fix the sample shape and dtype from the most common kind among (up to 256) probed
    # inputs, so that one odd file sorted first cannot make all the others "odd".
    image_options: ImageOptions | None = None
    shape: tuple[int, ...] | None = None
    dtype = ""
    for s in _by_most_common_kind(samples, found.layout):
        try:
            if found.layout == "images":
                assert s.path is not None
                image_options = infer_image_options(s.path, size, color_mode)
            arr = load_sample(s, found.layout, image_options)
        except Exception:  # noqa: BLE001 - reported when the sample is converted
            continue
        shape, dtype = tuple(arr.shape), np.dtype(arr.dtype).name
        break
    if shape is None:
        raise InputError(f"None of the {len(samples)} inputs in {raw} could be read; see the files' formats.")

    with staged_dataset(out, source=raw, overwrite=overwrite, what="input") as staging:
        # npy: workers write the files; hdf5: workers return arrays to the writer here.
        writer = staging.writer(format, shape, dtype, shard_size=shard_size, compression=compression)
        data_dir = str(writer.root) if format == "npy" else None
        if on_start:
            on_start(len(samples))
        chunks = [samples[i : i + _CHUNK] for i in range(0, len(samples), _CHUNK)]
        runner = Parallel(n_jobs=n_jobs if len(chunks) > 1 else 1, return_as="generator")
        errors: dict[str, str] = {}
        for res in runner(
            delayed(_convert_chunk)(c, found.layout, image_options, shape, dtype, data_dir) for c in chunks
        ):
            good_ids, good_arrays = [], []
            for sid, value in res:
                if isinstance(value, str):
                    errors[sid] = value
                elif value is not None:
                    good_ids.append(sid)
                    good_arrays.append(value)
            if good_ids:
                writer.add_many(good_ids, np.stack(good_arrays))
            if progress:
                progress(len(res))
        kept = [s for s in samples if s.id not in errors]
        skipped.extend({"path": s.source, "reason": errors[s.id]} for s in samples if s.id in errors)
        if not kept:
            raise InputError(f"None of the {len(samples)} inputs in {raw} could be converted; see the reasons above.")

        # Drop classes left without any sample, keeping label order.
        present = sorted({s.label for s in kept})
        remap = {old: new for new, old in enumerate(present)}
        for old, name in enumerate(found.classes):
            if old not in remap:
                skipped.append({"path": name, "reason": "class dropped: none of its inputs could be converted"})
        classes = [found.classes[i] for i in present]
        labels = np.array([remap[s.label] for s in kept], dtype=np.int64)
        if len(classes) < 2:
            raise InputError(
                f"Found only one class ({classes[0]!r}, {len(kept)} samples) in {raw}: a classifier needs at "
                "least two. Add a folder (or label value) per class."
            )
        try:
            parts = stratified_split(labels, fractions, seed=seed, class_names=classes)
        except SplitError as e:
            if errors:
                path, reason = next((s.source, errors[s.id]) for s in samples if s.id in errors)
                raise SplitError(f"{e} Note: {len(errors)} of {len(samples)} inputs could not be converted, "
                                 f"e.g. {path}: {reason}.") from None
            raise

        params: dict[str, Any] = {
            "source": str(raw.resolve()),
            "layout": found.layout,
            "seed": seed,
            "split": {"train": fractions[0], "validation": fractions[1], "test": fractions[2]},
            "format": format,
        }
        if format == "hdf5":
            params["compression"] = compression
        if image_options is not None:
            params["image_size"] = list(image_options.image_size or ())
            params["color_mode"] = image_options.color_mode
            params["resized"] = image_options.resize
        params.update(found.details)
        if weights is not None:
            params["weights_file"] = str(Path(weights).resolve())
        label_of = {s.id: int(label) for s, label in zip(kept, labels)}
        partition = {p: [kept[i].id for i in pos] for p, pos in parts.items()}
        # Shards hold the samples partition by partition, each in input order.
        order = [kept[i].id for p in partition for i in sorted(parts[p])]
        storage = writer.finish(label_of, order)
        manifest = Manifest(
            classes=classes,
            labels=label_of,
            partition=partition,
            sample_shape=shape,
            sample_dtype=dtype,
            storage=storage,
            sample_weights=weights_for_samples([s.id for s in kept], all_ids=[s.id for s in samples],
                                               column=found.weights, file=file_weights),
            prepare=params,
            skipped=skipped,
        )
        manifest.save(staging.path / MANIFEST_NAME)
    manifest.path = (out / MANIFEST_NAME).resolve()
    return PrepareResult(manifest=manifest, num_skipped=len(skipped))


def _kind(sample: RawSample, layout: str) -> tuple | None:
    """A cheap fingerprint of an input's shape and type, from its header only (`None`: unreadable)."""
    try:
        if layout == "images":
            from PIL import Image

            with Image.open(sample.path) as img:
                return (img.height, img.width, img.mode)
        if layout == "npy":
            arr = np.load(sample.path, mmap_mode="r", allow_pickle=False)
            return (arr.shape, arr.dtype.str)
    except Exception:  # noqa: BLE001 - an unreadable input is reported when it is converted
        return None
    return ()  # csv: every row has the same columns


def _by_most_common_kind(samples: Sequence[RawSample], layout: str, probe: int = 256) -> list[RawSample]:
    """``samples`` with those of the most common kind (among ``probe`` spread evenly) first.

    Ties go to the kind met first in input order, so the choice is deterministic.
    """
    if layout == "csv" or len(samples) <= 1:
        return list(samples)
    picks = sorted(set(np.linspace(0, len(samples) - 1, min(probe, len(samples))).astype(int).tolist()))
    kinds = {i: _kind(samples[i], layout) for i in picks}
    counts = Counter(k for k in kinds.values() if k is not None)
    if not counts:
        return list(samples)
    common = counts.most_common(1)[0][0]
    first = [i for i in picks if kinds[i] == common]
    taken = set(first)
    return [samples[i] for i in first] + [s for i, s in enumerate(samples) if i not in taken]
