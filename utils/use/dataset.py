"""Load a subset of tracks for training: a PyTorch ``Dataset`` over a subset file and its clips.

Each item is one track: ``num_frames`` frames sampled uniformly over its clip (seeking is cheap
because clips have a keyframe every half second), its class index and name, and its record.
Reads our subsets (``fn``, ``top10_lbl``...) and the released TrackVerse subsets rebuilt by
download_tracks.py (``track_mp4_filename``, ``top10_label_ids``...) alike.

    ds = TrackClipDataset("TrackVerseDB/tracks_subsets/TrackVerseLVIS-CB100-1K-T0.jsonl.gzip",
                          clips_dir="TrackVerseDB/tracks_mp4/TrackVerseLVIS", num_frames=8)
    loader = DataLoader(ds, batch_size=16, num_workers=4, collate_fn=collate_tracks)

Whole clips of different lengths (and, with ``size=None``, different frame sizes):

    ds = TrackClipDataset(subset, clips_dir=..., num_frames=None, size=None)
    loader = DataLoader(ds, batch_size=16, collate_fn=collate_padded)
    # frames (B, T_max, H_max, W_max, 3) zero-padded; lengths (B,); sizes (B, 2) = (h, w)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from utils.core.layout import inside
from utils.core.video import probe_video, read_frames, read_frames_at
from utils.records.track_files import read_records
from utils.records.tracks import TrackRecord


def sample_times(duration: float, num_frames: int, fps: float) -> np.ndarray:
    """Centres of ``num_frames`` equal parts of the clip, kept inside its last frame."""
    last = max(duration - 1.0 / max(fps, 1e-6), 0.0)
    return np.minimum((np.arange(num_frames) + 0.5) / num_frames * duration, last)


class TrackClipDataset(Dataset):
    """Tracks of a subset file; frames come back as a uint8 tensor (T, H, W, 3) unless a
    ``transform`` (called on that tensor) says otherwise.

    ``clips_dir`` is the folder the records' file names are relative to:
    ``<base_dir>/tracks_mp4/<dataset_name>`` for clips made by extract_tracks.py,
    ``<base_dir>/tracks_mp4`` for released subsets rebuilt by download_tracks.py.
    ``size`` = (h, w) resizes every frame (needed by :func:`collate_tracks` to batch clips of
    different shapes; :func:`collate_padded` pads instead). ``num_frames=None`` returns every
    frame of the clip (lengths differ: batch with :func:`collate_padded`).
    """

    def __init__(
        self,
        subset_file: str | os.PathLike,
        clips_dir: str | os.PathLike,
        num_frames: int | None = 8,
        size: tuple[int, int] | None = (224, 224),
        transform: Callable[[torch.Tensor], Any] | None = None,
        class_names: list[str] | None = None,
        skip_missing: bool = False,
    ):
        if num_frames is not None and num_frames < 1:
            raise ValueError(f"num_frames must be a positive number or None (the whole clip), got {num_frames}")
        self.clips_dir = Path(clips_dir)
        self.num_frames = num_frames
        self.size = size
        self.transform = transform
        records = list(read_records(subset_file))
        if skip_missing:
            records = [r for r in records if self.clip_path(r).exists()]
        if not records:
            raise ValueError(f"{subset_file}: no tracks" + (" with a clip on disk" if skip_missing else ""))
        self.records: list[TrackRecord] = records
        self.class_names = class_names

    def clip_path(self, record: TrackRecord) -> Path:
        return inside(self.clips_dir, record.fn)

    def __len__(self) -> int:
        return len(self.records)

    def label_of(self, record: TrackRecord) -> tuple[int, str]:
        """Class index and name of a track: its top-1 label."""
        index = int(record.top10_lbl[0]) if record.top10_lbl else -1
        if record.top10_desc:
            name = record.top10_desc[0]
        elif self.class_names is not None and 0 <= index < len(self.class_names):
            name = self.class_names[index]
        else:
            name = ""
        return index, name

    def __getitem__(self, i: int) -> dict[str, Any]:
        record = self.records[i]
        path = self.clip_path(record)
        size = (self.size[1], self.size[0]) if self.size is not None else None
        if self.num_frames is None:
            frames = list(read_frames(path, size=size))
        else:
            info = probe_video(path, decode_check=False)
            frames = read_frames_at(path, sample_times(info.duration, self.num_frames, info.fps), size=size)
        video = torch.from_numpy(np.stack([f.image for f in frames]))
        label, name = self.label_of(record)
        return {
            "frames": self.transform(video) if self.transform is not None else video,
            "times": torch.tensor([f.time for f in frames], dtype=torch.float64),
            "label": label,
            "label_name": name,
            "index": i,
            "record": record.to_dict(),
        }


def collate_tracks(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack frames and labels; keep names and records as lists."""
    return {
        "frames": torch.stack([b["frames"] for b in batch]),
        "times": torch.stack([b["times"] for b in batch]),
        "label": torch.tensor([b["label"] for b in batch], dtype=torch.long),
        "label_name": [b["label_name"] for b in batch],
        "index": torch.tensor([b["index"] for b in batch], dtype=torch.long),
        "record": [b["record"] for b in batch],
    }


def collate_padded(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch clips of different lengths and frame sizes: each (T, ...) frames tensor zero-padded
    at the end of every dimension to the largest, with ``lengths`` (B,) = each T and ``sizes``
    (B, 2) = each clip's dimensions 1 and 2 ((h, w) for the default (T, H, W, 3) frames) before
    padding; the rest as :func:`collate_tracks`."""
    clips = [b["frames"] for b in batch]
    lengths = torch.tensor([c.shape[0] for c in clips], dtype=torch.long)
    sizes = torch.tensor([[c.shape[1], c.shape[2]] for c in clips], dtype=torch.long)
    shape = [int(lengths.max()), *(max(c.shape[d] for c in clips) for d in range(1, clips[0].dim()))]
    frames = clips[0].new_zeros((len(clips), *shape))
    for i, c in enumerate(clips):
        frames[(i, *(slice(0, n) for n in c.shape))] = c
    times = torch.zeros((len(batch), shape[0]), dtype=torch.float64)
    for i, b in enumerate(batch):
        times[i, :b["times"].shape[0]] = b["times"]
    return {
        "frames": frames,
        "lengths": lengths,
        "sizes": sizes,
        "times": times,
        "label": torch.tensor([b["label"] for b in batch], dtype=torch.long),
        "label_name": [b["label_name"] for b in batch],
        "index": torch.tensor([b["index"] for b in batch], dtype=torch.long),
        "record": [b["record"] for b in batch],
    }
