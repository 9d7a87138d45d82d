// Package prefetchlist reads and writes the list of what a workload read
// from an image, which boot writes (BOOTFS_RECORD, boot mount --record)
// and mkimage --prefetch and boot mount --prefetch read, and maps it to
// the chunks of the image's index that hold it. It depends on casync
// alone.
//
// The list is text, one entry a line:
//
//	# bootfs prefetch list v2
//	/usr/bin/whole-file
//	"/usr/lib/libpart.so" 0+65536 1048576+131072
//
// A line that is an absolute path alone names the whole file (the first
// format, which lists and hand-written lists keep using). A line that
// starts with a double quote holds a Go-quoted path (strconv.Quote: how a
// path with a newline, a carriage return or bytes that are not UTF-8 is
// written), then nothing, which again means the whole file, or blanks and
// byte ranges of the file, each OFFSET+LENGTH in decimal bytes: only
// those parts of the file are listed. Blank lines and lines that start
// with '#' are skipped; the header comment says which format wrote the
// list and is not required.
package prefetchlist
