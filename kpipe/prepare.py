"""``kpipe prepare``: raw samples -> per-sample ``.npy`` files or HDF5 shards + ``manifest.json``."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import dataclasses
import math
import os
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kpipe._execution import BACKENDS, Pool, check_backend, dask_pool, effective_n_jobs, local_pool, run_ordered
from kpipe._io import PARTIAL_SUFFIX
from kpipe._prepare_tasks import ChunkResult, ChunkTask, convert_chunk, rebuild_shard_task
from kpipe._staging import check_output_folder, staged_dataset
from kpipe._validation import check_choice, check_int, check_n_jobs, check_number, check_seed
from kpipe.errors import ArgumentError, InputError, SplitError, StoreError
from kpipe.ingest import (
    BACKGROUNDS,
    COLOR_MODES,
    IMAGE_DTYPES,
    ImageOptions,
    RawSample,
    SampleError,
    ScanResult,
    describe_skipped,
    image_kind,
    infer_image_options,
    load_sample,
    npy_kind,
    parse_missing,
    scan,
    skip,
)
from kpipe.manifest import MANIFEST_NAME, Manifest
from kpipe.split import SMALL_CLASS_POLICIES, parse_split, stratified_split
from kpipe.storage import FORMATS, STORAGE_ROOTS, check_storage_options  # noqa: F401 - FORMATS re-exported
from kpipe.storage.hdf5 import SHARD_NAME, default_shard_size
from kpipe.verify import CHECKSUM_ALGORITHM
from kpipe.weights import read_weights_file, weights_for_samples

__all__ = ["BACKENDS", "PrepareResult", "parse_image_size", "prepare"]


NONFINITE_POLICIES = ("skip", "error")
"""Values of ``nonfinite``: a sample holding NaN or Inf is skipped (listed in ``skipped``) or stops prepare."""
DUPLICATE_POLICIES = ("group", "drop", "error")
"""Values of ``duplicates``: exact duplicate samples are kept together in one partition, dropped (the first
kept), or an error."""

_NOTES = {
    "16->8 bits": "16-bit to uint8 (v >> 8)",
    "8->16 bits": "8-bit to uint16 (v * 257)",
    "alpha composited": "transparency composited onto {background}",
    "resized": "resized to {size}",
}


@dataclasses.dataclass
class PrepareResult:
    """What `prepare` produced.

    Attributes:
        manifest: The written `Manifest` (``manifest.path`` is set).
        num_skipped: Number of raw inputs skipped (listed in ``manifest.skipped``).
        report: Facts for the summary: ``notes`` (value changes made by the
            image rules, e.g. ``{"16->8 bits": 12}``), ``duplicate_groups``
            (lists of IDs of equal content), ``conflicting_labels`` (how many
            of those groups mix classes), ``small_classes`` (warnings),
            ``execution`` (where the work ran: ``backend``, ``workers``,
            ``tasks``, the measured ``sample_cost_s`` that chose them, and the
            tasks' summed wall and CPU seconds).
    """

    manifest: Manifest
    num_skipped: int
    report: dict[str, Any] = dataclasses.field(default_factory=dict)

    def summary(self) -> str:
        """A few lines for people: the partition sizes, a class x partition table, the imbalance ratio, then only
        what applies, one line each: skipped inputs by kind, dropped CSV columns and rows, NaN/Inf skips,
        duplicates and value changes, each with the option that decides it.

        Example:
            Prepared 1797 samples in 10 classes: train 1438, validation 180, test 179 -> prepared/manifest.json
            class  train  validation  test  total
            0        142          18    18    178
            ...
            Imbalance ratio 1.05 (largest class '3': 183 samples, smallest '8': 174)
        """
        from kpipe.inspection import class_table, imbalance_sentence

        m = self.manifest
        parts = ", ".join(f"{name} {len(ids)}" for name, ids in m.partition.items())
        lines = [f"Prepared {m.num_samples} samples in {m.num_classes} classes: {parts} -> {m.path}",
                 class_table(m), imbalance_sentence(m).capitalize()]
        return "\n".join(lines + [n[0].upper() + n[1:] for n in self._notes()])

    def _notes(self) -> list[str]:
        m, p = self.manifest, self.manifest.prepare
        line = []
        kinds = Counter(s.get("kind", "unreadable") for s in m.skipped)
        if self.num_skipped:
            shown = ", ".join(f"{n} {k}" for k, n in kinds.most_common())
            line.append(f"{self.num_skipped} input{'s' if self.num_skipped != 1 else ''} skipped ({shown}; see "
                        "`kpipe inspect` or `skipped` in the manifest)")
        if p.get("dropped_columns"):
            reasons = p.get("dropped_column_reasons", {})
            line.append("dropped columns: " + ", ".join(f"{c} ({reasons.get(c, 'dropped')})"
                                                        for c in p["dropped_columns"]))
        if p.get("dropped_rows"):
            line.append(f"{p['dropped_rows']} row{'s' if p['dropped_rows'] != 1 else ''} dropped for missing values "
                        f"(--missing {p.get('missing', 'auto')})")
        if kinds.get("nonfinite"):
            line.append(f"{kinds['nonfinite']} with NaN/Inf skipped (--nonfinite {p.get('nonfinite', 'skip')})")
        groups = self.report.get("duplicate_groups") or []
        if groups:
            n = sum(len(g) for g in groups)
            how = {"group": "each group kept in one partition", "drop": "the first of each kept"}.get(
                p.get("duplicates", "group"), "")
            conflict = self.report.get("conflicting_labels", 0)
            conflicts = f", {conflict} with conflicting labels" if conflict else ""
            line.append(f"{len(groups)} duplicate group{'s' if len(groups) != 1 else ''} ({n} samples{conflicts}): "
                        f"{how} (--duplicates {p.get('duplicates', 'group')})")
        notes = self.report.get("notes") or {}
        if notes:
            size = "x".join(str(d) for d in p.get("image_size", []))
            line.append("converted: " + ", ".join(
                f"{n} {_NOTES.get(k, k).format(background=p.get('background', 'white'), size=size)}"
                for k, n in notes.items()))
        line.extend(self.report.get("small_classes", []))
        return line

    def to_dict(self) -> dict[str, Any]:
        """The facts of `summary` as JSON values (``kpipe prepare --json``)."""
        from kpipe.inspection import class_counts, imbalance

        m = self.manifest
        counts = class_counts(m)
        totals = {c: sum(per[c] for per in counts.values()) for c in m.classes}
        return {"manifest": str(m.path), "num_samples": m.num_samples, "classes": list(m.classes),
                "partitions": {p: len(ids) for p, ids in m.partition.items()}, "counts": counts,
                "imbalance": imbalance(totals), "sample": {"shape": list(m.sample_shape), "dtype": m.sample_dtype},
                "num_skipped": self.num_skipped,
                "skipped_by_kind": dict(Counter(s.get("kind", "unreadable") for s in m.skipped)),
                "duplicate_groups": len(self.report.get("duplicate_groups") or []),
                "notes": self._notes()}


def parse_image_size(text: str | Sequence[int] | None) -> tuple[int, int] | None:
    """Parse ``"64x48"`` (height x width) or ``(64, 48)`` into ``(64, 48)``; `None` stays `None`.

    Raises:
        InputError: If it is not two positive integers (joined by ``x`` in text); ``(1.5, 2)`` and
            ``(True, 2)`` are refused, never rounded.
    """
    if text is None:
        return None
    parts: list = []
    if isinstance(text, str):
        try:
            parts = [int(p) for p in text.lower().split("x")]
        except ValueError:
            parts = []
    elif isinstance(text, Sequence):
        parts = list(text)
    if len(parts) != 2 or not all(_is_positive_int(p) for p in parts):
        raise InputError(f"`image_size` must be HEIGHTxWIDTH in pixels, e.g. 64x64. Received: image_size={text!r}")
    return int(parts[0]), int(parts[1])


def _is_positive_int(value: Any) -> bool:
    try:
        return check_int(value, "size", minimum=1) is not None
    except ArgumentError:
        return False


def _failure_note(skipped: Sequence[dict[str, str]], sizes: Counter | None = None) -> str:
    """`` Skipped N inputs: ...`` (grouped by kind) and the image sizes found, for an error message."""
    note = ""
    if skipped:
        note += f" Skipped {len(skipped)} input{'s' if len(skipped) != 1 else ''}: {describe_skipped(skipped)}."
    if sizes and len(sizes) > 1:
        shown = ", ".join(f"{s} ({n})" for s, n in sizes.most_common(6))
        note += (f" The images come in {len(sizes)} sizes: {shown}; pass --image-size HxW to resize them all to one "
                 "size.")
    return note


def prepare(
    raw: str | os.PathLike,
    out: str | os.PathLike,
    *,
    layout: str = "auto",
    split: str | Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    image_size: str | Sequence[int] | None = None,
    color_mode: str | None = None,
    dtype: str = "auto",
    background: str | None = None,
    label_column: str | None = None,
    id_column: str | None = None,
    weight_column: str | None = None,
    weights: str | os.PathLike | None = None,
    missing: str | None = None,
    nonfinite: str = "skip",
    duplicates: str = "group",
    small_classes: str = "error",
    format: str = "npy",
    shard_size: int | None = None,
    compression: str | None = "none",
    n_jobs: int = -1,
    backend: str = "auto",
    scheduler: str | None = None,
    executor: cf.Executor | None = None,
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

    Every sample is checked (shape, dtype, NaN / Inf) and checksummed
    (`kpipe.verify.sample_digest`, stored as ``manifest.sample_checksums``);
    samples of equal content are found by their checksum. Nothing is dropped
    or changed without a record: skipped inputs are listed in
    ``manifest.skipped`` with a reason and a kind, and `PrepareResult.summary`
    counts them, with the policy that decided.

    Args:
        raw: A folder of class sub-folders (images or ``.npy``), or a ``.csv`` file.
        out: Output folder.
        layout: ``"auto"``, ``"images"``, ``"npy"`` or ``"csv"``.
        split: Train, validation, test fractions, e.g. ``"0.8,0.1,0.1"``;
            allocated exactly per class (see `kpipe.split.stratified_split`).
        seed: Seed of the split.
        image_size: ``"HxW"`` or ``(height, width)`` to resize images to;
            default keeps the size (images of another size are skipped).
        color_mode: ``"grayscale"``, ``"rgb"`` or ``"rgba"``; default
            inferred from the first image.
        dtype: Image dtype: ``"auto"`` (default: ``uint16`` for 16-bit
            images, ``float32`` for float images, else ``uint8``), ``"uint8"``,
            ``"uint16"`` or ``"float32"``. Never a per-image scaling: 16 -> 8
            bits is ``v >> 8``, 8 -> 16 bits ``v * 257`` (see
            `kpipe.ingest.ImageOptions`).
        background: ``"white"`` (`None`, the default, means it) or ``"black"``: what transparent
            pixels are composited onto for ``rgb`` and ``grayscale``.
        label_column: CSV column of the class; `None` (default) means ``"label"``. The CSV options
            (``label_column``, ``id_column``, ``weight_column``, ``missing``) are refused for a folder, the
            image options (``image_size``, ``color_mode``, ``dtype``, ``background``) for input that is not
            images: never ignored.
        id_column: CSV column of sample IDs (must be unique); row numbers if `None`.
        weight_column: CSV column of per-sample weights (finite, >= 0), kept
            out of the features and stored as ``manifest.sample_weights``.
        weights: A file of per-sample weights, CSV rows ``ID,weight``
            (header optional) or a JSON object; every sample needs one.
        missing: CSV missing values (empty, ``NA``, ``?``...): ``"auto"``
            (`None`, the default, means it: drop the columns more than half empty, then the rows
            still missing a value), ``"drop-rows"``, ``"drop-columns"`` or
            ``"fill=VALUE"`` (see `kpipe.ingest.parse_missing`).
        nonfinite: A sample holding NaN or Inf: ``"skip"`` (default; listed
            in ``skipped``) or ``"error"``.
        duplicates: Samples of exactly equal content: ``"group"`` (default:
            kept, each group in one partition, so none leaks from train to
            test), ``"drop"`` (the first in input order is kept, the others
            skipped) or ``"error"``.
        small_classes: A class too small for a sample in every partition:
            ``"error"`` (default) or ``"warn"`` (it fills train first).
        format: Storage format: ``"npy"`` (one file per sample) or ``"hdf5"``
            (shards laid out partition by partition; with ``backend="dask"``
            one shard per task, holding consecutive inputs). Defaults to ``"npy"``.
        shard_size: Samples per HDF5 shard. Defaults to about 1 GiB of
            sample data per shard; with ``backend="dask"`` also at most the
            inputs divided by the cluster's threads, so that every worker
            writes a shard.
        compression: HDF5 compression: ``"none"`` (contiguous, read by memory
            map or ``preadv`` at the dataset's file offset: the fastest),
            ``"gzip"`` or ``"lzf"`` (chunked per sample, read through h5py).
            Defaults to ``"none"``.
        n_jobs: Parallel workers on this machine, as joblib (``-1``: all
            cores; ``1``: everything in this process).
        backend: Where the work runs (see `kpipe._execution`): ``"auto"``
            (default: this process, threads or loky processes, chosen from the
            measured cost of a sample: threads unless the work holds the GIL
            and is large enough to pay for starting processes), ``"threads"``,
            ``"loky"`` (processes), or ``"dask"``: tasks on a Dask cluster
            (``pip install kpipe[dask]``), each writing one HDF5 shard or its
            ``.npy`` files itself and returning only metadata; ``out`` must be
            on a POSIX file system that every worker sees at the same path.
        scheduler: With ``backend="dask"``: the scheduler address
            (``tcp://host:8786``) or ``"auto"`` (default: a `LocalCluster` on
            127.0.0.1, closed afterwards).
        executor: Any `concurrent.futures.Executor` to run the tasks (e.g. a
            Ray or MPI pool), instead of ``backend``; it is treated like a
            cluster (tasks write their own output, shared path needed).
        overwrite: Replace ``out`` if it exists and is a dataset kpipe wrote
            (its ``.kpipe-dataset`` marker, see `kpipe._staging`); never the
            working directory, a home folder, the input or a folder above them.
        progress: Called with the number of samples done since the last call.
        on_start: Called once with the number of samples to convert.

    Returns:
        A `PrepareResult` with the manifest and the number of skipped inputs.

    Raises:
        InputError: If ``raw`` is missing, empty, has no usable sample, or an
            option is invalid; with ``nonfinite="error"`` / ``duplicates="error"``
            on the first such sample. The message lists the skipped inputs by
            kind (and the image sizes found), so nothing is lost with the
            staging folder.
        SplitError: If a class is too small for the split (``small_classes="error"``).
        OutputExistsError: If ``out`` exists and ``overwrite`` is False, or
            ``overwrite`` is True but ``out`` is not a dataset kpipe wrote.
        StoreError: If the output cannot be written (disk full, read-only file
            system...); ``out`` is left as it was.

    Example:
        >>> result = prepare("sample_data/digits", "prepared")
        >>> print(result.summary())
        Prepared 1797 samples in 10 classes: train 1438, validation 180, test 179; per class ...
    """
    raw, out = Path(raw), Path(out)
    options = _check_options(
        split=split, seed=seed, image_size=image_size, color_mode=color_mode, dtype=dtype, background=background,
        missing=missing, nonfinite=nonfinite, duplicates=duplicates, small_classes=small_classes, format=format,
        shard_size=shard_size, compression=compression, n_jobs=n_jobs, backend=backend, scheduler=scheduler,
        executor=executor)
    fractions, size, compression = options.fractions, options.image_size, options.compression
    seed, shard_size, n_jobs, backend, scheduler = (options.seed, options.shard_size, options.n_jobs,
                                                    options.backend, options.scheduler)
    check_output_folder(out, raw, overwrite=overwrite, what="input")

    found = scan(raw, layout, label_column=label_column, id_column=id_column, weight_column=weight_column,
                 missing=missing)
    _check_image_only_options(raw, found.layout, dtype=dtype, image_size=image_size, color_mode=color_mode,
                              background=background)
    background = "white" if background is None else background
    file_weights = _read_weights(weights, found)
    skipped = list(found.skipped)
    samples = found.samples
    image_options, shape, dtype_name = _probe(found, raw, size, color_mode, dtype, background, skipped)
    output = _Output(format, shape, dtype_name, compression, shard_size)

    with contextlib.ExitStack() as stack:
        staging = stack.enter_context(staged_dataset(out, source=raw, overwrite=overwrite, what="input"))
        output.root = staging.path / STORAGE_ROOTS[format]
        output.root.mkdir()
        cost = _sample_cost(samples, found.layout, image_options, output)
        pool = stack.enter_context(_open_pool(backend, n_jobs, scheduler, executor, output, len(samples), cost))
        if format == "hdf5" and not pool.remote:
            output.writer = staging.writer(format, shape, dtype_name, shard_size=shard_size, compression=compression)
        if on_start:
            on_start(len(samples))
        converted = _convert_all(samples, found.layout, image_options, output, pool, cost, nonfinite=nonfinite,
                                 duplicates=duplicates, progress=progress)
        skipped.extend(converted.skipped)
        kept = [s for s in samples if s.id in converted.digests]
        sizes = _size_counts(converted.sizes, image_options, len(kept))
        if not kept:
            raise InputError(f"None of the {len(samples)} inputs in {raw} could be converted."
                             + _failure_note(skipped, sizes))
        classes, labels = _renumber_classes(raw, found, kept, converted, skipped, sizes)
        parts, small_warnings = _split_kept(kept, labels, classes, converted.digests, fractions, seed=seed,
                                            duplicates=duplicates, small_classes=small_classes,
                                            failure_note=lambda: _failure_note(skipped, sizes))
        for w in small_warnings:
            warnings.warn(w, stacklevel=2)

        params = _prepare_params(raw, found, fractions, image_options, seed=seed, format=format,
                                 nonfinite=nonfinite, duplicates=duplicates, small_classes=small_classes,
                                 compression=compression, weights=weights)
        dup_groups = _duplicate_groups(kept, converted.digests)
        dup_groups = [g for g in dup_groups if len(g) > 1] + converted.dropped_groups
        params["duplicate_groups"] = dup_groups
        label_of = {s.id: int(label) for s, label in zip(kept, labels)}
        partition = {p: [kept[i].id for i in pos] for p, pos in parts.items()}
        # HDF5 written here: shards hold the samples partition by partition, each in input order.
        order = [kept[i].id for p in partition for i in sorted(parts[p])]
        storage = _finish_output(output, converted, label_of, {s.id: s.label for s in kept}, order, pool)
        manifest = Manifest(
            classes=classes,
            labels=label_of,
            partition=partition,
            sample_shape=shape,
            sample_dtype=dtype_name,
            storage=storage,
            sample_weights=weights_for_samples([s.id for s in kept], all_ids=[s.id for s in samples],
                                               column=found.weights, file=file_weights),
            prepare=params,
            skipped=skipped,
            sample_checksums={"algorithm": CHECKSUM_ALGORITHM,
                              "digests": {s.id: converted.digests[s.id] for s in kept}},
        )
        manifest.save(staging.path / MANIFEST_NAME)
    manifest.path = (out / MANIFEST_NAME).resolve()
    report = _report(converted, dup_groups, label_of, small_warnings, pool, cost)
    return PrepareResult(manifest=manifest, num_skipped=len(skipped), report=report)


def _check_options(
    *, split, seed, image_size, color_mode, dtype: str, background: str | None, missing: str | None, nonfinite: str,
    duplicates: str, small_classes: str, format: str, shard_size, compression, n_jobs, backend: str,
    scheduler: str | None, executor,
) -> _Options:
    """Check `prepare`'s options before anything is read; returns the parsed ones.

    Returns:
        `_Options`: the split fractions, seed, image size, shard size, compression, n_jobs, backend and
        scheduler, normalized.

    Raises:
        InputError, SplitError, ArgumentError: On the first invalid option, in the order of `prepare`'s arguments
            (the split first).
    """
    if not isinstance(split, str):
        if not isinstance(split, Sequence):
            raise SplitError(f"`split` must be three fractions such as 0.8,0.1,0.1 (train, validation, test). "
                             f"Received: split={split!r}")
        split = tuple(check_number(f, "split", error=SplitError) for f in split)
    fractions = parse_split(split)
    seed = check_seed(seed)
    size = parse_image_size(image_size)
    if color_mode is not None:
        check_choice(color_mode, "color_mode", COLOR_MODES, error=InputError)
    check_choice(dtype, "dtype", IMAGE_DTYPES, error=InputError)
    if background is not None:
        check_choice(background, "background", BACKGROUNDS, error=InputError)
    check_choice(nonfinite, "nonfinite", NONFINITE_POLICIES, error=InputError)
    check_choice(duplicates, "duplicates", DUPLICATE_POLICIES, error=InputError)
    check_choice(small_classes, "small_classes", SMALL_CLASS_POLICIES, error=InputError)
    if missing is not None:
        parse_missing(missing)
    shard_size = check_int(shard_size, "shard_size", minimum=1, allow_none=True)
    compression = check_storage_options(format, shard_size, compression)
    n_jobs = check_n_jobs(n_jobs, error=InputError)
    backend, scheduler = check_backend(backend, scheduler)
    if executor is not None and not isinstance(executor, cf.Executor):
        raise InputError(f"`executor` must be a concurrent.futures.Executor. Received: executor={executor!r}")
    return _Options(fractions, seed, size, shard_size, compression, n_jobs, backend, scheduler)


@dataclasses.dataclass(frozen=True)
class _Options:
    """`prepare`'s options that `_check_options` normalizes."""

    fractions: tuple[float, float, float]
    seed: int
    image_size: tuple[int, int] | None
    shard_size: int | None
    compression: str
    n_jobs: int
    backend: str
    scheduler: str | None


def _check_image_only_options(raw: Path, layout: str, *, dtype: str, image_size, color_mode: str | None,
                              background: str | None) -> None:
    """Refuse ``dtype``, ``image_size``, ``color_mode`` and ``background`` for input that is not images (it is
    stored as it is)."""
    given = {name: value for name, value in (("dtype", None if dtype == "auto" else dtype), ("image_size", image_size),
                                              ("color_mode", color_mode), ("background", background))
             if value is not None}
    if layout != "images" and given:
        raise InputError(
            f"{', '.join(f'`{name}`' for name in given)} appl{'y' if len(given) != 1 else 'ies'} to images; {raw} is "
            f"{layout} input, stored as it is. Leave {'them' if len(given) != 1 else 'it'} out. Received: "
            + ", ".join(f"{name}={value!r}" for name, value in given.items())
        )


def _read_weights(weights: str | os.PathLike | None, found: ScanResult) -> dict[str, float] | None:
    """The per-sample weights of the ``weights`` file (`None` without one), checked against the scanned IDs
    and the CSV weight column before any conversion (see `kpipe.weights.weights_for_samples`)."""
    file_weights = read_weights_file(weights) if weights is not None else None  # per-sample weights (issue 4)
    weights_for_samples([], all_ids=[s.id for s in found.samples], column=found.weights, file=file_weights)
    return file_weights


def _renumber_classes(raw: Path, found: ScanResult, kept: Sequence[RawSample], converted: _Converted,
                      skipped: list[dict[str, str]], sizes: Counter) -> tuple[list[str], np.ndarray]:
    """Drop the classes left without any sample, keeping label order; returns ``(classes, labels of kept)``.

    Each dropped class is appended to ``skipped`` (``"class-dropped"``).

    Raises:
        InputError: If fewer than two classes are left.
    """
    present = sorted({s.label for s in kept})
    remap = {old: new for new, old in enumerate(present)}
    lost = Counter(s.label for s in found.samples if s.id not in converted.digests)
    for old, name in enumerate(found.classes):
        if old not in remap:
            skipped.append(skip(name, "class-dropped", f"class dropped: none of its {lost[old]} inputs could "
                                                       "be converted"))
    classes = [found.classes[i] for i in present]
    labels = np.array([remap[s.label] for s in kept], dtype=np.int64)
    if len(classes) < 2:
        raise InputError(
            f"Found only one class ({classes[0]!r}, {len(kept)} samples) in {raw}: a classifier needs at "
            "least two. Add a folder (or label value) per class." + _failure_note(skipped, sizes)
        )
    return classes, labels


def _split_kept(kept: Sequence[RawSample], labels: np.ndarray, classes: list[str], digests: dict[str, str],
                fractions: tuple[float, float, float], *, seed: int, duplicates: str, small_classes: str,
                failure_note: Callable[[], str]) -> tuple[dict[str, np.ndarray], list[str]]:
    """`stratified_split` of the kept samples, equal contents grouped with ``duplicates="group"``.

    Returns:
        ``(partition -> positions in kept, small-class warnings)``; the warnings are returned, not issued, so
        that `prepare` issues them for its caller.

    Raises:
        SplitError: If a class is too small for the split; ``failure_note()`` is appended to its message.
    """
    group_of = {d: k for k, d in enumerate(dict.fromkeys(digests[s.id] for s in kept))}
    groups = np.array([group_of[digests[s.id]] for s in kept], dtype=np.int64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            parts = stratified_split(labels, fractions, seed=seed, class_names=classes,
                                     groups=groups if duplicates == "group" else None,
                                     small_classes_policy=small_classes)
        except SplitError as e:
            raise SplitError(f"{e}{failure_note()}") from None
    return parts, [str(w.message) for w in caught]


def _prepare_params(raw: Path, found: ScanResult, fractions: tuple[float, float, float],
                    image_options: ImageOptions | None, *,
                    seed: int, format: str, nonfinite: str, duplicates: str, small_classes: str, compression: str,
                    weights: str | os.PathLike | None) -> dict[str, Any]:
    """The ``prepare`` section of the manifest: the source, options and what the scan found (before the
    duplicate groups, added by `prepare`)."""
    params: dict[str, Any] = {
        "source": str(raw.resolve()),
        "layout": found.layout,
        "seed": seed,
        "split": {"train": fractions[0], "validation": fractions[1], "test": fractions[2]},
        "format": format,
        "nonfinite": nonfinite,
        "duplicates": duplicates,
        "small_classes": small_classes,
    }
    if format == "hdf5":
        params["compression"] = compression
    if image_options is not None:
        params["image_size"] = list(image_options.image_size or ())
        params["color_mode"] = image_options.color_mode
        params["resized"] = image_options.resize
        params["dtype"] = image_options.dtype
        params["background"] = image_options.background
    params.update(found.details)
    if weights is not None:
        params["weights_file"] = str(Path(weights).resolve())
    return params


def _report(converted: _Converted, dup_groups: list[list[str]], label_of: dict[str, int], small_warnings: list[str],
            pool: Pool, cost: _Cost) -> dict[str, Any]:
    """`PrepareResult.report`: value-change notes, duplicate groups, small-class warnings and where the work ran."""
    conflicting = sum(len({label_of.get(i, -1) for i in g if i in label_of}) > 1 for g in dup_groups)
    return {"notes": dict(converted.notes), "duplicate_groups": dup_groups, "conflicting_labels": conflicting,
            "small_classes": small_warnings,
            "execution": {"backend": pool.kind, "workers": pool.workers, "tasks": converted.num_tasks,
                          "description": pool.description, "sample_cost_s": cost.wall, "sample_cpu_s": cost.cpu,
                          "sample_write_s": cost.write,
                          "task_seconds": converted.task_seconds, "task_cpu_seconds": converted.task_cpu_seconds}}


def _probe(found, raw: Path, size, color_mode, dtype: str, background: str,
           skipped: list[dict[str, str]]) -> tuple[ImageOptions | None, tuple[int, ...], str]:
    """Fix the sample shape and dtype (and image options) from the most common kind of input.

    The most common kind among (up to 256) probed inputs is tried first, so
    that one odd file sorted first cannot make all the others "odd".

    Raises:
        InputError: If no input can be read (naming files and reasons).
    """
    failures: list[dict[str, str]] = []
    for s in _by_most_common_kind(found.samples, found.layout):
        image_options = None
        if found.layout == "images" and s.path is None:
            raise TypeError(f"image sample {s.id!r} has no `path`; it was not made by `scan` of a folder")
        try:
            if found.layout == "images":
                image_options = infer_image_options(s.path, size, color_mode, dtype, background)
            arr = load_sample(s, found.layout, image_options)
        except SampleError as e:
            failures.append(skip(s.source, e.kind, str(e)))
            continue
        except Exception as e:  # any failure: this input is reported when it is converted
            failures.append(skip(s.source, "unreadable", f"unreadable: {e}"))
            continue
        return image_options, tuple(arr.shape), np.dtype(arr.dtype).name
    raise InputError(f"None of the {len(found.samples)} inputs in {raw} could be read."
                     + _failure_note([*skipped, *failures]))


@dataclasses.dataclass
class _Output:
    """Where and how the samples are written; ``shards`` filled as they are."""

    format: str
    shape: tuple[int, ...]
    dtype: str
    compression: str
    shard_size: int | None
    root: Path | None = None
    shards: list[dict] = dataclasses.field(default_factory=list)  # written by cluster tasks
    shard_rows: int = 0
    writer: Any = None  # hdf5 on this machine: the `Hdf5Writer` the driver feeds in input order


@dataclasses.dataclass
class _Converted:
    digests: dict[str, str]  # kept sample ID -> digest
    skipped: list[dict[str, str]]
    sizes: Counter  # "HxW" -> images skipped for their size
    notes: Counter
    dropped_groups: list[list[str]]  # --duplicates drop: [kept ID, dropped IDs...]
    dropped: set[str] = dataclasses.field(default_factory=set)
    num_tasks: int = 0
    task_seconds: float = 0.0
    task_cpu_seconds: float = 0.0


_PARALLEL_MIN_S = 0.3  # estimated sequential seconds below which a pool does not pay
_PROCESSES_MIN_S = 8.0  # seconds processes must save before they pay (start-up ~1-2 s, pickling, a margin)
_LONG_SAMPLE_S = 0.002  # per-sample cost above which C code (decoders), not Python overhead, dominates
_TASK_S = {"local": 0.05, "remote": 0.5}  # target seconds of work per task (dispatch cost: ~0.1 ms / ~5 ms)
_BLOCK_BYTES = 16 << 20  # most sample bytes one local task hands back (hdf5)


@dataclasses.dataclass(frozen=True)
class _Cost:
    """Measured per-sample cost, in seconds.

    Attributes:
        wall: Loading, checking and checksumming one input (wall time).
        cpu: The same, CPU time of the thread.
        write: Writing one ``.npy`` file (npy output; 0 for hdf5), wall time;
            ``write_cpu`` its CPU time. Not counted as work for processes:
            creating files in one folder is serialized by local file systems
            (measured: two processes creating files in one ext4 folder were
            slower than one); only its waits (a network file system) are
            worth threads.
    """

    wall: float
    cpu: float
    write: float = 0.0
    write_cpu: float = 0.0

    @property
    def releases_gil(self) -> bool:
        """Whether threads can overlap the work: it waits for I/O (wall over 3x CPU: more than a busy
        machine's scheduling delays), or decodes for long in C."""
        return self.wall + self.write > 3.0 * (self.cpu + self.write_cpu) or self.wall >= _LONG_SAMPLE_S


def _sample_cost(samples: Sequence[RawSample], layout: str, image_options: ImageOptions | None, output: _Output,
                 probe: int = 24) -> _Cost:
    """The median cost of one sample over up to ``probe`` inputs spread over the list.

    npy output: each probed sample is also written (``.probe-<k>.npy`` in the
    output folder, removed at once) and timed apart. Drives the choice of
    pool and the task size; never the output.
    """
    from kpipe._prepare_tasks import write_npy_file
    from kpipe.storage.npy import expected_header
    from kpipe.verify import sample_digest

    if not samples:
        return _Cost(0.0, 0.0)
    picks = sorted(set(np.linspace(0, len(samples) - 1, min(probe, len(samples))).astype(int).tolist()))
    header = expected_header(output.shape, np.dtype(output.dtype))
    walls, cpus, writes, write_cpus = [], [], [], []
    for k, i in enumerate(picks):
        start, cpu = time.perf_counter(), time.thread_time()
        try:
            arr = load_sample(samples[i], layout, image_options)
            sample_digest(arr)
        except Exception:  # any failure: only a probe, the input is judged when it is converted
            continue
        walls.append(time.perf_counter() - start)
        cpus.append(time.thread_time() - cpu)
        if output.format == "npy" and arr.shape == output.shape and arr.dtype == np.dtype(output.dtype):
            start, cpu = time.perf_counter(), time.thread_time()
            write_npy_file(str(output.root), f".probe-{k}", header, arr)
            os.unlink(output.root / f".probe-{k}.npy")
            writes.append(time.perf_counter() - start)
            write_cpus.append(time.thread_time() - cpu)
    if not walls:
        return _Cost(0.001, 0.001)
    if not writes:
        return _Cost(float(np.median(walls)), float(np.median(cpus)))
    return _Cost(float(np.median(walls)), float(np.median(cpus)), float(np.median(writes)),
                 float(np.median(write_cpus)))


@contextlib.contextmanager
def _open_pool(backend: str, n_jobs: int, scheduler: str | None, executor: cf.Executor | None, output: _Output,
               num_samples: int, cost: _Cost):
    """The `Pool` the work runs on (see `BACKENDS`).

    ``"auto"``: this process when there is one core or under `_PARALLEL_MIN_S`
    of work; threads when they can overlap it (the probe waited for I/O,
    e.g. a network file system, or spent its time in long C decodes:
    `_Cost.releases_gil`); loky processes when the loading holds the GIL and
    spreading its CPU time over the workers saves more than
    `_PROCESSES_MIN_S` (about 4x what starting them and pickling the results
    cost); else this process (threads would only contend for the GIL).
    """
    if executor is not None:
        yield Pool(executor, "custom", effective_n_jobs(n_jobs), remote=True, description=type(executor).__name__)
        return
    if backend == "dask":
        with dask_pool(scheduler) as pool:
            yield pool
        return
    workers = min(effective_n_jobs(n_jobs), max(1, num_samples))
    kind = _auto_kind(workers, num_samples, cost) if backend == "auto" else backend
    with local_pool(kind, workers) as pool:
        yield pool


def _auto_kind(workers: int, num_samples: int, cost: _Cost) -> str:
    """``backend="auto"`` on this machine: ``"serial"``, ``"threads"`` or ``"loky"`` (see `_open_pool`)."""
    if workers == 1 or num_samples * (cost.wall + cost.write) < _PARALLEL_MIN_S:
        return "serial"
    if cost.releases_gil:
        return "threads"
    # What processes would save: the loading's CPU time (wall time also counts a busy machine's delays) spread
    # over the workers; writing .npy files is left out (creating files in one folder does not parallelize).
    saving = num_samples * cost.cpu * (1 - 1 / workers)
    return "loky" if saving > _PROCESSES_MIN_S else "serial"


def _task_rows(num: int, output: _Output, pool: Pool, cost: _Cost) -> int:
    """Inputs per task: about `_TASK_S` seconds of measured work, at least 4 tasks per worker."""
    target = _TASK_S["remote" if pool.remote else "local"]
    rows = int(target / max(cost.wall + cost.write, 1e-6))
    rows = min(rows, math.ceil(num / (4 * pool.workers)))
    if output.format == "hdf5":
        nbytes = max(1, math.prod(output.shape) * np.dtype(output.dtype).itemsize)
        rows = min(rows, max(1, _BLOCK_BYTES // nbytes))
    return max(1, min(rows, 16384))


def _convert_all(samples, layout, image_options, output: _Output, pool: Pool, cost: _Cost, *,
                 nonfinite: str, duplicates: str, progress) -> _Converted:
    """Run the chunk tasks on ``pool``, merge their results in input order, apply the NaN/Inf and duplicate policies.

    HDF5: tasks on this machine hand the kept arrays back to ``output.writer``
    (an `Hdf5Writer`: a raw temporary file, laid out in shards partition by
    partition once the split is known); tasks on a cluster (``pool.remote``)
    each write one shard of up to ``shard_size`` inputs, in input order.
    npy: every task writes its samples' files.
    """
    rows, output.shard_rows = _chunking(len(samples), output, pool, cost)
    tasks = [_make_task(k, samples[lo : lo + rows], layout, image_options, output, pool.remote)
             for k, lo in enumerate(range(0, len(samples), rows))]
    merge = _Merge(tasks, {s.id: s.source for s in samples}, output, nonfinite=nonfinite, duplicates=duplicates,
                   progress=progress)
    run_ordered(pool, convert_chunk, tasks, on_result=merge)
    return merge.finish()


def _chunking(num: int, output: _Output, pool: Pool, cost: _Cost) -> tuple[int, int]:
    """``(inputs per task, samples per HDF5 shard)``.

    Cluster tasks writing HDF5 each write one shard: ``shard_size``, by default about 1 GiB of samples and at
    most the inputs divided by the workers. Else tasks follow `_task_rows`.
    """
    shard_cap = output.shard_size or default_shard_size(output.shape, output.dtype)
    if output.format == "hdf5" and pool.remote:
        if output.shard_size is None:
            shard_cap = min(shard_cap, math.ceil(num / pool.workers))
        rows = max(1, shard_cap)
    else:
        rows = _task_rows(num, output, pool, cost)
    return rows, max(1, min(shard_cap, num))


class _Merge:
    """The ``on_result`` of `run_ordered` in `_convert_all`: merges each task's `ChunkResult` into a `_Converted`.

    Inputs are met one after the other, in input order, as a sequential run meets them: a skipped input is
    recorded (or stops prepare, ``nonfinite="error"``); a kept one is recorded with its digest unless it
    duplicates an earlier one (``duplicates="error"`` stops, ``"drop"`` skips it). Kept arrays handed back go
    to ``output.writer``; shards written by cluster tasks to ``output.shards``.
    """

    def __init__(self, tasks: Sequence[ChunkTask], source: dict[str, str], output: _Output, *, nonfinite: str,
                 duplicates: str, progress: Callable[[int], None] | None) -> None:
        self.tasks = tasks
        self.source = source  # sample ID -> where it comes from
        self.output = output
        self.nonfinite = nonfinite
        self.duplicates = duplicates
        self.progress = progress
        self.result = _Converted({}, [], Counter(), Counter(), [], num_tasks=len(tasks))
        self.first_of: dict[str, str] = {}  # digest -> first sample ID
        self.dropped: dict[str, list[str]] = {}  # first sample ID -> IDs dropped as its duplicates

    def __call__(self, index: int, res: ChunkResult) -> None:
        task = self.tasks[index]
        skips = {k: rest for k, *rest in res.skips}
        kept_at = {k: j for j, k in enumerate(res.kept)}
        good: list[int] = []  # positions in res.kept of the samples kept
        for k in sorted([*skips, *kept_at]):
            if k in skips:
                self._skipped(task.ids[k], *skips[k])
            elif self._kept(task.ids[k], res.digests[kept_at[k]]):
                good.append(kept_at[k])
        self.result.notes.update(res.notes)
        self.result.task_seconds += res.seconds
        self.result.task_cpu_seconds += res.cpu_seconds
        if self.output.writer is not None and good:
            self.output.writer.add_many([task.ids[res.kept[j]] for j in good], res.arrays[good])
        if res.shard is not None:
            self.output.shards.append(res.shard)
        if self.progress:
            self.progress(len(task.ids))

    def _skipped(self, sid: str, kind: str, reason: str, detail: str | None) -> None:
        source = self.source[sid]
        if kind == "nonfinite" and self.nonfinite == "error":
            raise InputError(f"Sample {sid!r} ({source}) holds {reason.split(' among')[0]}; "
                             "--nonfinite error stops here. Fix or remove the input, or pass --nonfinite "
                             "skip to leave such samples out (they are listed in the manifest).")
        self.result.skipped.append(skip(source, kind, reason))
        if kind == "size" and detail:
            self.result.sizes[detail] += 1

    def _kept(self, sid: str, digest: str) -> bool:
        """Record a converted sample; `False` if it is dropped as a duplicate (``duplicates="drop"``)."""
        first = self.first_of.setdefault(digest, sid)
        if first != sid:
            if self.duplicates == "error":
                raise InputError(
                    f"Samples {first!r} ({self.source[first]}) and {sid!r} ({self.source[sid]}) are exact "
                    "duplicates; --duplicates error stops here. Remove one, or pass --duplicates group (keep each "
                    "group in one partition) or --duplicates drop (keep the first)."
                )
            if self.duplicates == "drop":
                self.dropped.setdefault(first, []).append(sid)
                self.result.dropped.add(sid)
                self.result.skipped.append(skip(self.source[sid], "duplicate", f"exact duplicate of {first!r} "
                                                                               "(--duplicates drop)"))
                return False
        self.result.digests[sid] = digest
        return True

    def finish(self) -> _Converted:
        """The merged `_Converted`, with the groups of dropped duplicates."""
        self.result.dropped_groups = [[first, *rest] for first, rest in self.dropped.items()]
        return self.result


def _make_task(index: int, chunk: Sequence[RawSample], layout: str, image_options, output: _Output,
               remote: bool) -> ChunkTask:
    return ChunkTask(
        index=index,
        ids=tuple(s.id for s in chunk),
        labels=np.fromiter((s.label for s in chunk), dtype=np.int64, count=len(chunk)),
        paths=None if layout == "csv" else tuple(str(s.path) for s in chunk),
        values=np.stack([s.values for s in chunk]) if layout == "csv" else None,
        layout=layout,
        image_options=image_options,
        shape=tuple(output.shape),
        dtype=output.dtype,
        format=output.format,
        root=str(Path(output.root).absolute()),
        compression=output.compression,
        shard_name=SHARD_NAME.format(index) if output.format == "hdf5" and remote else None,
    )


def _finish_output(output: _Output, converted: _Converted, label_of: dict[str, int], written: dict[str, int],
                   order: list[str], pool: Pool) -> dict:
    """Fix-ups after the merge, then the ``storage`` dict of the manifest.

    npy: files of dropped duplicates are removed. HDF5 on this machine: the
    writer lays the shards out partition by partition (``order``), with the
    final labels. HDF5 from cluster tasks: a shard holding a dropped
    duplicate, or a sample whose class was renumbered (a class left without
    samples: ``written`` holds the labels the tasks wrote), is rebuilt (rare;
    run on the pool); files left by retried tasks are removed and every shard
    is checked to be visible here (a worker without the shared path wrote
    elsewhere).
    """
    root = output.root
    if pool.remote:
        _sweep_partials(root)
    if output.format == "npy":
        for sid in converted.dropped:
            (root / f"{sid}.npy").unlink(missing_ok=True)
        if pool.remote and label_of:
            _check_visible([root / f"{next(iter(label_of))}.npy"])
        return {"format": "npy", "root": root.name}
    if output.writer is not None:
        return output.writer.finish(label_of, order)
    _check_visible([root / s["file"] for s in output.shards], [s["num_bytes"] for s in output.shards])
    fix = [s for s in output.shards
           if any(i in converted.dropped for i in s["ids"])
           or any(label_of.get(i, written.get(i)) != written.get(i) for i in s["ids"])]
    fixed: dict[str, dict | None] = {}
    if fix:
        args = [(str(root), s, [i for i in s["ids"] if i in label_of], label_of, tuple(output.shape), output.dtype,
                 output.compression) for s in fix]
        run_ordered(pool, rebuild_shard_task, args,
                    on_result=lambda i, rec: fixed.__setitem__(fix[i]["file"], rec))
    shards = []
    for s in output.shards:
        rec = fixed.get(s["file"], s)
        if rec is not None:
            shards.append(rec)
    return {
        "format": "hdf5",
        "root": root.name,
        "compression": output.compression,
        "shard_size": output.shard_rows,
        "num_shards": len(shards),
        "shards": shards,
    }


def _sweep_partials(root: Path) -> None:
    """Remove ``*.partial`` files left in ``root`` by task attempts that were cut short (then retried)."""
    with os.scandir(root) as it:
        for e in it:
            if e.name.endswith(PARTIAL_SUFFIX):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(e.path)


def _check_visible(paths: Sequence[Path], sizes: Sequence[int] | None = None) -> None:
    """Every file the workers wrote must be here, whole: else they wrote to a path this machine does not share."""
    for k, path in enumerate(paths):
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            size = None
        if size is None or (sizes is not None and size != sizes[k]):
            seen = "no such file" if size is None else "another size"
            raise StoreError(
                f"The workers wrote {path.name} but this machine sees {seen} at {path}. With --backend dask, OUT "
                "must be on a file system shared by every worker and this machine, at the same path (e.g. NFS); the "
                "output was left as it was."
            )


def _duplicate_groups(kept: Sequence[RawSample], digests: dict[str, str]) -> list[list[str]]:
    groups: dict[str, list[str]] = {}
    for s in kept:
        groups.setdefault(digests[s.id], []).append(s.id)
    return list(groups.values())


def _size_counts(skipped_sizes: Counter, image_options: ImageOptions | None, num_kept: int) -> Counter:
    """``"HxW"`` -> number of images: the kept ones (at the dataset's size) and those skipped for their size."""
    counts = Counter(skipped_sizes)
    if image_options is not None and image_options.image_size is not None and num_kept and skipped_sizes:
        h, w = image_options.image_size
        counts[f"{h}x{w}"] += num_kept
    return counts


def _kind(sample: RawSample, layout: str) -> tuple | None:
    """A cheap fingerprint of an input's shape and type, from its header only (`None`: unreadable)."""
    try:
        if layout == "images":
            return image_kind(sample.path)
        if layout == "npy":
            return npy_kind(sample.path)
    except Exception:  # any failure: an unreadable input is reported when it is converted
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
