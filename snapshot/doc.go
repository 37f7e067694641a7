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
// most 64 KiB of saved bytes of one region.
//
// # Layout
//
//	STORE/                             mode 0700
//	  .tmp-*                           work in progress and removed manifests,
//	                                   deleted by Open
//	  <uid>/                           real uid of the process at its first capture
//	    <pid>-<starttime>/             one process: pid and start time in clock ticks
//	      .process                     JSON ProcessID, boot id included
//	      .counter                     last snap-N number used
//	      .data-<id>                   the data of one save, mode 0400: zstd
//	                                   frames back to back, then image.json
//	                                   (the Image without memory bytes and
//	                                   maps), maps (/proc/PID/maps as
//	                                   captured) and the index (the seek table)
//	      <name>                       one committed snapshot: its manifest,
//	                                   mode 0400, with Info, the id of its
//	                                   data, the ids of the data it points
//	                                   into, and the size and xxhash64 of every
//	                                   section of its data file
//
// A pid and start time can repeat after a reboot. A process whose
// <pid>-<starttime> directory belongs to another boot id uses
// <pid>-<starttime>.boot-<tag> instead, tag being a hash of its boot id, so a
// process directory holds only the snapshots of one process.
//
// A data id is 128 random bits in hex, new for every save. Names are
// reused after a removal, ids never, so a data file can outlive the name it
// was saved under: it stays while any snapshot of the process points into
// it.
//
// The index maps, per region, sorted extents of region offsets to their
// source: bytes in a frame, or all-zero pages that nothing stores. Each frame
// entry holds the data it lies in (this snapshot's or one of the other data
// ids the index lists), its file offset, its compressed and uncompressed
// lengths and an xxhash64 of its uncompressed bytes. A read decompresses only
// the frames it touches and checks both lengths and the hash every time,
// wherever the frame lies, so damage gives an error wrapping ErrCorrupt,
// never wrong bytes. A Snapshot caches the last 64 frames it decompressed,
// so sequential reads in 128 KiB pieces decompress each frame once.
//
// # Incremental snapshots
//
// An image with Base set is captured relative to an older snapshot of the
// same process, and its runs marked Base hold the bytes the base holds at
// the same addresses. A local store never reads those runs. It finds the
// base's extents for them by virtual address, because regions may have moved
// to other indexes, been split or merged. It copies them into the new index,
// pointing at the frame where the base keeps each byte. When that frame is
// itself in an older snapshot's data, the new index points there directly,
// so a read opens at most the data files that hold its frames and never
// follows a chain. Only the changed runs are compressed and stored, so
// Info.Stored of an incremental snapshot counts what it added, and a save
// after 1% of the pages changed costs about 1% of a full one plus its
// metadata. A bucket stores every snapshot whole: the Store reads the Base
// runs from the loaded base instead of the memory source, and the saved
// Image still carries Base and the flags.
//
// # Commit protocol
//
// Save builds the data file of a snapshot in a new .tmp-* work directory
// of the store, on the same filesystem as its destination: memory
// (compressed on GOMAXPROCS workers), image.json, maps and index, and
// starts syncing it. SaveFrom does the same for an image whose memory comes from a
// MemorySource. Either way the workers read at most 64 KiB of runs at a
// time, so a save holds a few frames of memory whatever the size of the
// image. Inside a frame, the pages that look incompressible follow the
// others, which keeps zstd fast on a mix. It then locks the process
// directory, picks the name, checks that the data files its index points
// into still exist, and writes the manifest in the work directory (and a
// new counter file for an automatic name). It waits until the data file,
// the manifest and the counter are synced, each on its own goroutine so
// that the filesystem's journal can commit them together. Then it renames
// the counter into place, the data file to .data-<id> and the manifest to
// <name> in the process directory, and syncs the process directory. A
// save that creates the process directory syncs the directory's files
// together, renames it into place, and syncs its parent while the save
// goes on, waiting for that sync only at the end. So a snapshot is durable
// after two rounds of syncs, three for the first snapshot of a process.
//
// A crash before the data file's rename leaves only a work directory. A
// crash between the data file's and the manifest's renames leaves a work
// directory holding the manifest, and a data file nothing uses. Open
// deletes both, finding the process directory from the manifest. A crash
// after the manifest's rename leaves a complete snapshot. On any error
// Save deletes the work directory, so a full disk costs nothing and the
// error wraps unix.ENOSPC.
//
// List and Snapshots return only snapshots whose manifest parses, matches its
// own hash, names the directory's process and snapshot, whose data file has
// the recorded size and whose data files pointed into exist. Other entries
// are skipped and logged at Warn once per Store. Load also checks the hashes
// of image.json, maps and index, that the index lists the data the manifest
// does, and that the extents of the index exactly tile the runs of the
// image.
//
// Remove moves the manifest to a .tmp-rm-* file in the store's top directory
// under the lock and syncs the process directory, so the snapshot
// disappears in one step and its name is free at once. Still under the
// lock, it reads every remaining manifest of the process and deletes the
// data files none uses (as its own data or as a source of frames), then
// deletes the moved manifest. A crash in between leaves the moved manifest,
// from which the next Open finds the process directory to clean. When a
// manifest cannot be read, nothing is deleted, because the data it uses is
// unknown. The process directory and its counter stay, so an automatic
// name snap-N is never used twice for one process.
//
// # Locking
//
// The store is shared by Stores in one or several programs (a mount and the
// CLI), so its locks are flock(2) locks on directories, which exclude each
// other even between two open files of one program:
//
//   - A process directory is locked exclusively while Save picks a name and
//     commits into it (which includes waiting for the sync of its data
//     file, started before), and while Remove moves a manifest out of it
//     and deletes unused data files. Data files are deleted only under this
//     lock, and a Save checks under it that the data it points into is
//     still there. The slow part of Save (compression and writing) runs
//     without it.
//   - A work directory is locked exclusively by its writer for its life.
//     Open deletes only .tmp-* entries it can lock without waiting, so it
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
// with either, except that only a directory stores incremental snapshots
// as such. Store checks names and images and sorts lists; every backend
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
//   - Load reads the metadata whole, checking its hashes. Memory is read
//     one frame at a time through a memoryObject (io.ReaderAt), and every
//     frame is checked against the index, so damage anywhere gives an
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
//	    .data/<upload id>/              memory, image.json, maps, index
//
// Hosts sharing a bucket use separate HOST prefixes and never see each
// other's snapshots. Save compresses memory into an unlinked spool file in
// os.TempDir, then uploads the data objects under a new random upload id,
// and last creates the manifest with a conditional put (If-None-Match: *),
// which fails when the name is taken; an automatic name then moves on to the
// next number. Data objects are never shared between snapshots, so a save
// that loses a name race cannot damage the winner. List lists the host's
// prefix once and fetches only manifests it has not cached by ETag. The
// upload id is the manifest's data id; a manifest in a bucket never points
// into other uploads. Load
// fetches the manifest and metadata objects; ReadRegion fetches each frame it
// decompresses with an HTTP range GET of at least 1 MiB on the memory
// object, keeps the last 4 such windows, and keeps the last 64 frames in
// the Snapshot's frame cache. Remove deletes the manifest, then
// the data objects.
//
// The server and credentials come from the environment (see OpenURL) and are
// never logged. A server that cannot be reached fails each request after a
// few retries with an error naming the endpoint. There are no locks: the
// conditional put is the only point where concurrent saves meet.
package snapshot
