// Package bootconfig defines /.bootfs/config.json, the file through which
// mkimage tells boot how to run a converted image: the original image's
// configuration, the chunk store and chunk parameters, and the digests of
// the index and TOC that sit beside it.
//
// mkimage writes the file and boot reads it. boot must never import
// mkimage, so the type lives here, and the package depends on the standard
// library and internal/inputfile only.
package bootconfig
