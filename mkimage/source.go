package mkimage

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/distribution/reference"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"

	"github.com/bootfs/bootfs/casync"
)

// Source is where a root filesystem comes from.
type Source struct {
	// Kind is "dir", "tar" or "docker".
	Kind string
	// Path is the directory or tar file ("-" means standard input for
	// tar), or the image reference for docker.
	Path string
	// Stdin is read for tar:- (default os.Stdin).
	Stdin io.Reader

	// For docker: the Engine API client and the inspected image, set by
	// Convert before encoding.
	docker *client.Client
	image  *image.InspectResponse
}

// ParseSource parses mkimage's SOURCE argument: dir:PATH, tar:PATH, tar:-
// or a Docker image reference.
func ParseSource(s string) (Source, error) {
	if s == "" {
		return Source{}, fmt.Errorf("no source given (want an image reference, dir:PATH, tar:PATH or tar:-)")
	}
	kind, path, _ := strings.Cut(s, ":")
	switch kind {
	case "dir", "tar":
		if path == "" {
			return Source{}, fmt.Errorf("source %q: %s: needs a path", s, kind)
		}
		return Source{Kind: kind, Path: path}, nil
	}
	if _, err := reference.ParseAnyReference(s); err != nil {
		return Source{}, fmt.Errorf("source %q: not dir:PATH, tar:PATH, tar:- or a valid image reference: %v", s, err)
	}
	return Source{Kind: "docker", Path: s}, nil
}

func (s Source) String() string {
	if s.Kind == "docker" {
		return s.Path
	}
	return s.Kind + ":" + s.Path
}

// sizeHint estimates the size of the source's archive for progress
// display: the image's size for docker, the file's for tar:PATH, 0 (not
// known) otherwise.
func (s Source) sizeHint() int64 {
	switch {
	case s.image != nil:
		return s.image.Size
	case s.Kind == "tar" && s.Path != "-":
		if fi, err := os.Stat(s.Path); err == nil && fi.Mode().IsRegular() {
			return fi.Size()
		}
	}
	return 0
}

// encode writes the source's catar archive to w.
func (s Source) encode(ctx context.Context, w io.Writer, opts *casync.EncodeOptions) error {
	switch s.Kind {
	case "dir":
		fi, err := os.Stat(s.Path)
		if err != nil {
			return fmt.Errorf("source %s: %w", s, err)
		}
		if !fi.IsDir() {
			return fmt.Errorf("source %s: not a directory (use tar:%s for a tarball)", s, s.Path)
		}
		return casync.EncodeDir(ctx, w, s.Path, opts)
	case "tar":
		var r io.Reader
		if s.Path == "-" {
			r = s.Stdin
			if r == nil {
				r = os.Stdin
			}
		} else {
			f, err := os.Open(s.Path)
			if err != nil {
				return fmt.Errorf("source %s: %w", s, err)
			}
			defer f.Close()
			r = f
		}
		if err := casync.EncodeTar(ctx, w, r, opts); err != nil {
			return fmt.Errorf("source %s: %w", s, err)
		}
		return nil
	case "docker":
		if s.docker == nil || s.image == nil {
			return fmt.Errorf("source %s: image not inspected", s)
		}
		return encodeImage(ctx, s.docker, s.image, w, opts)
	}
	return fmt.Errorf("source %s: unknown kind %q", s, s.Kind)
}

func (s Source) imageID() string {
	if s.image == nil {
		return ""
	}
	return s.image.ID
}
