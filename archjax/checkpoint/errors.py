"""What can go wrong with a checkpoint, as exceptions the restore path tells apart."""


class CheckpointError(RuntimeError):
    """A checkpoint could not be restored (corrupt, incomplete or a different model)."""


class CorruptCheckpointError(CheckpointError):
    """Unreadable files or values that fail their checksums: an older step may still be good."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint is fine but holds a different state tree (a user error, not corruption)."""


class CheckpointDiskFullError(CheckpointError):
    """A save failed for lack of disk space; the earlier checkpoints are intact."""


class CheckpointWarning(UserWarning):
    """A bad checkpoint was skipped in favour of an older one."""
