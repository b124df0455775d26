"""Where kept result files live: a local directory (the default) or an S3-compatible bucket."""

from __future__ import annotations

from pathlib import Path

from receiver.media.base import MediaStore, S3Location
from receiver.media.directory import LocalMedia

__all__ = ["media_store"]


def media_store(directory: str, s3: S3Location | None) -> MediaStore:
    """The configured store: the bucket when RECEIVER_MEDIA_URL names one, else the directory."""
    if s3 is None:
        return LocalMedia(Path(directory))
    from receiver.media.s3 import S3Media  # the S3 client loads only when a bucket is configured

    return S3Media(s3)
