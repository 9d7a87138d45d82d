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
