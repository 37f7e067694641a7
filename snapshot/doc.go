// Package snapshot defines the data model of a captured process (Image,
// Thread, Region, Run, FD) and stores images as snapshots, in a local
// directory or in an S3 bucket.
//
// # Terms
//
// An image is the state of one process read while it was frozen. A snapshot
// is an image committed to the store under a name, such as snap-3 or a name
// the user chose. A region is one mapping of the process. A run is a range of
// a region whose pages were present at capture; bytes outside every run were
// never touched and read as zeros. A frame is an independent zstd frame of at
// most 512 KiB of saved bytes of one region.
//
// # Layout
//
//	STORE/                             mode 0700
//	  .tmp-*                           work in progress, deleted by Open
//	  <uid>/                           real uid of the process at its first capture
//	    <pid>-<starttime>/             one process: pid and start time in clock ticks
//	      .process                     JSON ProcessID, boot id included
//	      .counter                     last snap-N number used
//	      <name>/                      one committed snapshot, files mode 0400
//	        image.json                 the Image without memory bytes and maps
//	        maps                       /proc/PID/maps as captured
//	        memory                     zstd frames, back to back
//	        index                      the seek table of memory
//	        manifest                   written last: Info and the size and
//	                                   xxhash64 of every other file
//
// A pid and start time can repeat after a reboot. A process whose
// <pid>-<starttime> directory belongs to another boot id uses
// <pid>-<starttime>.boot-<tag> instead, tag being a hash of its boot id, so a
// process directory holds only the snapshots of one process.
//
// The index maps, per region, sorted extents of region offsets to their
// source: bytes in a frame, or all-zero pages that nothing stores. Each frame
// entry holds its file offset, its compressed and uncompressed lengths and an
// xxhash64 of its uncompressed bytes. A read decompresses only the frames it
// touches and checks both lengths and the hash every time, so damage gives
// an error wrapping ErrCorrupt, never wrong bytes. A Snapshot caches the
// last 8 frames it decompressed, so sequential reads in 128 KiB pieces
// decompress each frame once. The index format has a version and extent
// kinds, so that a later version can add extents that point into a parent
// snapshot or a per-owner pack of deduplicated pages.
//
// # Commit protocol
//
// Save builds a snapshot in a new .tmp-* directory of the store, on the same
// filesystem as its destination: image.json, maps, memory (compressed on
// GOMAXPROCS workers) and index, each synced. SaveFrom does the same for
// an image whose memory comes from a MemorySource; either way the workers
// read at most 512 KiB of runs at a time, so a save holds a few frames of
// memory whatever the size of the image. Inside a frame, the pages that
// look incompressible follow the others, which keeps zstd fast on a mix. It then locks the process
// directory, picks the name, writes and syncs the manifest, syncs the work
// directory, renames it to <pid>-<starttime>/<name>, and syncs the process
// directory and the store. A crash before the rename leaves only a .tmp-*
// directory, which the next Open deletes; a crash after it leaves a complete
// snapshot. On any error Save deletes the work directory, so a full disk
// costs nothing and the error wraps unix.ENOSPC.
//
// List and Snapshots return only snapshots whose manifest parses, matches its
// own hash, names the directory's process and snapshot, and whose files have
// the recorded sizes. Other directories are skipped and logged at Warn once
// per Store. Load also checks the hashes of image.json, maps and index, and
// that the extents of the index exactly tile the runs of the image.
//
// Remove renames the snapshot directory to a .tmp-* name under the lock, so
// the snapshot disappears in one step, then deletes the files. The process
// directory and its counter stay, so an automatic name snap-N is never used
// twice for one process.
//
// # Locking
//
// The store is shared by Stores in one or several programs (a mount and the
// CLI), so its locks are flock(2) locks on directories, which exclude each
// other even between two open files of one program:
//
//   - A process directory is locked exclusively while Save picks a name and
//     commits into it, and while Remove renames a snapshot out of it. The
//     slow part of Save (compression and writing) runs without it.
//   - A work directory is locked exclusively by its writer for its life.
//     Open deletes only .tmp-* directories it can lock without waiting, so it
//     never deletes the work of a Save in progress in another program.
//
// Lock order: a work directory before a process directory. Inside a
// Snapshot, mu protects only the frame cache and is never held while
// reading or decompressing.
//
// # Backends
//
// A Store keeps its snapshots through a backend: a local directory (Open,
// the default, described above) or a prefix of an S3 bucket (OpenURL with
// s3://BUCKET/PREFIX). Callers see the same API, errors and file formats
// with either. Store checks names and images and sorts lists; every backend
// keeps this contract:
//
//   - A snapshot appears whole or not at all. Its data files are stored
//     first and its manifest last, and only a manifest that parses, names
//     the snapshot and process of its place, and whose files exist with the
//     recorded sizes makes a snapshot listed or loadable. Damaged ones are
//     skipped and logged at Warn once per Store.
//   - A save that fails or is killed before its manifest leaves nothing
//     listed. A taken name gives an error wrapping unix.EEXIST. Two
//     concurrent saves never commit one name twice (in a bucket, only on a
//     server that honours If-None-Match). snap-N numbers count up per
//     process and are not reused after a removal, except that in a bucket
//     two saves of one process at once may leave the lower number in its
//     counter.
//   - Remove makes a snapshot disappear in one step before deleting its
//     data; a missing snapshot gives an error wrapping unix.ENOENT.
//   - Load reads the metadata files whole, checking their hashes. Memory
//     is read one frame at a time through a memoryObject (io.ReaderAt), and
//     every frame is checked against the index, so damage anywhere gives an
//     error wrapping ErrCorrupt.
//   - Errors keep the errno of their cause and name the path, or the object
//     URL and server, that failed.
//
// # S3 layout
//
//	s3://BUCKET/PREFIX/HOST/            HOST: host name, or machine id
//	  <pid>-<starttime>.boot-<tag>/     one process, always with its boot tag
//	    .counter                        last snap-N number used
//	    <name>/manifest                 written last: as in a directory, plus
//	                                    the id of the upload holding the data
//	    .data/<upload id>/              image.json, maps, index, memory
//
// Hosts sharing a bucket use separate HOST prefixes and never see each
// other's snapshots. Save compresses memory into an unlinked spool file in
// os.TempDir, then uploads the data objects under a new random upload id,
// and last creates the manifest with a conditional put (If-None-Match: *),
// which fails when the name is taken; an automatic name then moves on to the
// next number. Data objects are never shared between snapshots, so a save
// that loses a name race cannot damage the winner. List lists the host's
// prefix once and fetches only manifests it has not cached by ETag. Load
// fetches the manifest and metadata objects; ReadRegion fetches each frame it
// decompresses with an HTTP range GET on the memory object and keeps the
// last 8 in the Snapshot's frame cache. Remove deletes the manifest, then
// the data objects.
//
// The server and credentials come from the environment (see OpenURL) and are
// never logged. A server that cannot be reached fails each request after a
// few retries with an error naming the endpoint. There are no locks: the
// conditional put is the only point where concurrent saves meet.
package snapshot
