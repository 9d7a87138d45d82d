package casync

import "errors"

// ErrFormat is wrapped by every error that reports malformed input: a
// truncated or corrupt catar, caidx, TOC or chunk frame.
var ErrFormat = errors.New("casync: malformed input")

// ErrUnsupported is wrapped by errors about well-formed input that uses a
// feature this package does not implement.
var ErrUnsupported = errors.New("casync: unsupported feature")
