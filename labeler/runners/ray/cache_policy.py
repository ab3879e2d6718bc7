"""Where a Ray worker's judgment cache may live: on its own node's disk, never on a network share.

The judgment cache is diskcache, i.e. SQLite. SQLite's locking is safe between processes of one
machine and unsafe on NFS/SMB and other network filesystems (https://www.sqlite.org/faq.html#q5):
two nodes writing one cache there can corrupt it. So every node keeps its own cache (the default
folder, or ``--cache-dir``, resolved on that node) and a worker refuses a cache folder that sits on
a network filesystem. Across nodes, work is never repeated through the output file instead: a rerun
skips every pair already in OUT, so only the judgments of pairs in flight when a node died can be
asked again (see docs/scale.md).
"""

from __future__ import annotations

from pathlib import Path

#: Filesystem types (as /proc/mounts names them) on which SQLite's file locks cannot be trusted.
NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "afs", "9p", "ceph", "glusterfs", "lustre",
        "gpfs", "beegfs", "fuse.sshfs", "fuse.s3fs", "fuse.gcsfuse", "fuse.juicefs", "fuse.ceph-fuse",
        "fuse.glusterfs", "fuse.rclone", "fuse.goofys", "fuse.mountpoint-s3", "virtiofs",
    }
)  # fmt: skip


def _unescape_mount_field(field: str) -> str:
    # /proc/mounts writes space, tab, newline and backslash in paths as octal escapes (\040...).
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def filesystem_type(path: str | Path, mounts_text: str) -> str | None:
    """The type of the filesystem holding ``path``: the longest mount point that contains it."""
    target = Path(path).resolve()
    best: tuple[int, str] | None = None
    for line in mounts_text.split("\n"):
        fields = line.split()
        if len(fields) < 3:
            continue
        mount_point = Path(_unescape_mount_field(fields[1]))
        if (target == mount_point or mount_point in target.parents) and (
            best is None or len(mount_point.parts) > best[0]
        ):
            best = (len(mount_point.parts), fields[2])
    return best[1] if best else None


def read_mounts() -> str:
    """This machine's mount table ('' where there is none to read, e.g. macOS)."""
    try:
        return Path("/proc/mounts").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def refuse_network_cache(directory: Path | None, mounts_text: str | None = None) -> None:
    """Raise ValueError when the judgment cache folder sits on a network filesystem."""
    if directory is None:
        return
    fstype = filesystem_type(directory, read_mounts() if mounts_text is None else mounts_text)
    if fstype in NETWORK_FILESYSTEMS:
        raise ValueError(
            f"the judgment cache {directory} is on a {fstype} network filesystem, where SQLite (diskcache) "
            "can corrupt under concurrent writers; give --cache-dir a folder on each node's local disk "
            "(the same path is resolved on every node) or --no-cache"
        )
