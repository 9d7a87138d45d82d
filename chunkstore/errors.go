package chunkstore

import "errors"

// ErrBadPath is wrapped by errors about a request or file path that is not
// "<4 hex>/<64 hex>.cacnk".
var ErrBadPath = errors.New("chunkstore: malformed chunk path")

// ErrReadOnly is wrapped by errors from writes to a store that cannot
// store chunks.
var ErrReadOnly = errors.New("chunkstore: store is read-only")

// ErrBadURL is wrapped by errors from ParseURL and ParseURLs.
var ErrBadURL = errors.New("chunkstore: bad store URL")

// ErrNotRegular is wrapped by errors about a chunk path that holds
// something other than a regular file: a FIFO, a symbolic link, a
// directory. Such a chunk is never served; `chunkstore verify --repair`
// removes it.
var ErrNotRegular = errors.New("chunkstore: chunk file is not a regular file")
