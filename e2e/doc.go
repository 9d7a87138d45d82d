// Package e2e holds black-box tests of the built binaries (mkimage,
// chunkstore, boot) against a real Docker engine: images are converted
// with mkimage, served with chunkstore serve on 127.0.0.1, and run with
// docker run --network host. Without root, Docker or /dev/fuse the tests
// skip with the reason; with E2E_REQUIRE=1 a skip is a failure.
//
// The binaries come from $BOOTFS_BIN (make e2e sets it), or the tests
// build them into a temporary directory.
package e2e
