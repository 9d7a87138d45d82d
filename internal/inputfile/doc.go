// Package inputfile opens the files boot reads from a container image or
// is given on its command line (the index, the TOC, config.json, the
// image's /etc/passwd and /etc/group) so that a hostile one cannot hang or
// exhaust it: a FIFO, a device such as /dev/zero or a file larger than its
// caller can hold is refused, with an error that says which and why.
//
// It depends on the standard library only.
package inputfile
