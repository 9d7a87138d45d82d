package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"golang.org/x/sync/errgroup"
)

// Tags of keep-alive manifests.
const (
	// subjectTagSuffix follows "sha256-<boot image hex>" on the tag of
	// the manifest whose subject is that boot image.
	subjectTagSuffix = ".bootfs"
	// mapTagPrefix precedes the hex of the chunk map on the tag of a
	// keep-alive manifest without a subject.
	mapTagPrefix = "bootfs-chunks-"
)

// SubjectTag is the tag of the keep-alive manifest of the boot image
// with manifest digest d.
func SubjectTag(d v1.Hash) string { return d.Algorithm + "-" + d.Hex + subjectTagSuffix }

func isKeepAliveTag(t string) bool {
	return strings.HasPrefix(t, mapTagPrefix) || (strings.HasPrefix(t, "sha256-") && strings.HasSuffix(t, subjectTagSuffix))
}

// remoteOpts are the options of go-containerregistry's remote calls:
// this store's authenticated transport, and one attempt.
func (s *Store) remoteOpts(ctx context.Context) []remote.Option {
	return []remote.Option{
		remote.WithContext(ctx),
		remote.WithTransport(s.rt),
		remote.WithRetryBackoff(remote.Backoff{Steps: 1}),
		remote.WithJobs(s.opts.Jobs),
	}
}

// readMaps reads the chunk maps the URL names: the pinned one, the one of
// the tagged boot image, or every one tagged in the repository.
func (s *Store) readMaps(ctx context.Context) ([]*chunkMap, error) {
	switch {
	case s.pin != (v1.Hash{}):
		m, err := s.readMap(ctx, s.pin)
		if err != nil {
			return nil, err
		}
		return []*chunkMap{m}, nil
	case s.tag != "":
		d, err := s.keepAliveMap(ctx, s.repo.Tag(s.tag), true)
		if err != nil {
			return nil, err
		}
		m, err := s.readMap(ctx, d)
		if err != nil {
			return nil, err
		}
		return []*chunkMap{m}, nil
	}
	tags, err := remote.List(s.repo, s.remoteOpts(ctx)...)
	if err != nil {
		var te *transport.Error
		if errors.As(err, &te) && te.StatusCode == http.StatusNotFound {
			if s.opts.Write {
				return nil, nil // a new repository
			}
			return nil, fmt.Errorf("%w: repository %s does not exist (is it the one mkimage --push wrote?)", ErrNotBootfs, s.repo)
		}
		return nil, fmt.Errorf("list tags of %s: %w", s.repo, explain(err, s.opts.AuthFile))
	}
	tags = slices.DeleteFunc(tags, func(t string) bool { return !isKeepAliveTag(t) })
	slices.Sort(tags)
	if len(tags) == 0 && !s.opts.Write {
		return nil, fmt.Errorf("%w: repository %s has no chunk maps (no tag bootfs-chunks-… or sha256-….bootfs; is it the one mkimage --push wrote?)", ErrNotBootfs, s.repo)
	}
	maps := make([]*chunkMap, len(tags))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(s.opts.Jobs)
	for i, t := range tags {
		g.Go(func() error {
			d, err := s.keepAliveMap(gctx, s.repo.Tag(t), false)
			if errors.Is(err, ErrNotBootfs) {
				s.opts.Logger.Warn("tag looks like a bootfs keep-alive manifest but is not one; skipped", "tag", t, "err", err)
				return nil
			}
			if err != nil {
				return err
			}
			maps[i], err = s.readMap(gctx, d)
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return slices.DeleteFunc(maps, func(m *chunkMap) bool { return m == nil }), nil
}

// keepAliveMap returns the chunk map digest of the keep-alive manifest
// ref names, or, if bootImage, of the one whose subject is the boot
// image ref.
func (s *Store) keepAliveMap(ctx context.Context, ref name.Tag, bootImage bool) (v1.Hash, error) {
	if !bootImage {
		return s.manifest(ctx, ref)
	}
	desc, err := remote.Head(ref, s.remoteOpts(ctx)...)
	if err != nil {
		return v1.Hash{}, notFound(err, s.opts.AuthFile, ref.String())
	}
	ka := s.repo.Tag(SubjectTag(desc.Digest))
	m, err := s.manifest(ctx, ka)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("%w: %s is not a bootfs boot image: no %s manifest beside it (%w)", ErrNotBootfs, ref, ka.TagStr(), err)
	}
	return m, nil
}

func (s *Store) manifest(ctx context.Context, r name.Reference) (v1.Hash, error) {
	desc, err := remote.Get(r, s.remoteOpts(ctx)...)
	if err != nil {
		return v1.Hash{}, notFound(err, s.opts.AuthFile, r.String())
	}
	var m v1.Manifest
	if err := json.Unmarshal(desc.Manifest, &m); err != nil {
		return v1.Hash{}, fmt.Errorf("%w: %s: %v", ErrNotBootfs, r, err)
	}
	if string(m.Config.MediaType) != MediaTypeChunkMap {
		return v1.Hash{}, fmt.Errorf("%w: %s: config is %s, not a chunk map", ErrNotBootfs, r, m.Config.MediaType)
	}
	return m.Config.Digest, nil
}

// notFound explains a registry error, saying "does not exist" for 404s.
func notFound(err error, authFile, what string) error {
	var te *transport.Error
	if errors.As(err, &te) && te.StatusCode == http.StatusNotFound {
		return fmt.Errorf("%w: %s does not exist", ErrNotBootfs, what)
	}
	return explain(err, authFile)
}

// readMap fetches and checks the chunk map d.
func (s *Store) readMap(ctx context.Context, d v1.Hash) (*chunkMap, error) {
	b, err := s.readBlob(ctx, d, maxMapSize)
	if err != nil {
		return nil, fmt.Errorf("chunk map %s: %w", d, err)
	}
	m, err := parseChunkMap(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", d, err)
	}
	return m, nil
}

// readBlob reads the whole blob d, of at most limit bytes, and checks it
// against its digest.
func (s *Store) readBlob(ctx context.Context, d v1.Hash, limit int64) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.blobURL(d), nil)
	if err != nil {
		return nil, err
	}
	resp, err := s.web.Do(req)
	if err != nil {
		return nil, explain(err, s.opts.AuthFile)
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound:
		return nil, fmt.Errorf("%w: not in repository %s (was the image pushed there with mkimage --push?)", ErrNotBootfs, s.repo)
	case http.StatusUnauthorized, http.StatusForbidden:
		return nil, explain(fmt.Errorf("%s", resp.Status), s.opts.AuthFile)
	default:
		return nil, fmt.Errorf("%s", resp.Status)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("larger than %d bytes", limit)
	}
	if got := sha256Hash(b); got != d {
		return nil, fmt.Errorf("content has digest %s", got)
	}
	return b, nil
}
