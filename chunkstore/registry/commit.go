package registry

import (
	"context"
	"encoding/json"
	"fmt"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sync/errgroup"

	"github.com/bootfs/bootfs/casync"
)

// Commit makes the chunks ids (an image's index, in order) readable by
// others: it uploads the spooled ones the repository lacks, packed in
// order of first use, then the chunk map of ids, and, unless
// Options.DeferKeepAlive, a keep-alive manifest tagged
// bootfs-chunks-<map hex>. It returns the store URL that pins the map,
// for the boot image. Every id must be in the repository or spooled.
// The packs and the map depend only on ids and on what the repository
// held, never on the order chunks were stored in.
func (s *Store) Commit(ctx context.Context, ids []casync.ChunkID) (string, error) {
	if !s.opts.Write {
		return "", fmt.Errorf("commit to %s: opened read-only", s.url)
	}
	if err := s.index(ctx); err != nil {
		return "", fmt.Errorf("commit to %s: %w", s.url, err)
	}
	order := firstUse(ids)

	// Cut the new chunks into packs.
	type newPack struct {
		ids   []casync.ChunkID
		spool []loc
		size  int64
	}
	var packs []*newPack
	s.mu.Lock()
	for _, id := range order {
		if _, ok := s.chunks[id]; ok {
			continue
		}
		sp, ok := s.spooled[id]
		if !ok {
			s.mu.Unlock()
			return "", fmt.Errorf("commit to %s: chunk %s was never stored", s.url, id)
		}
		if len(packs) == 0 || packs[len(packs)-1].size+sp.size > int64(s.opts.PackSize) && len(packs[len(packs)-1].ids) > 0 {
			packs = append(packs, &newPack{})
		}
		p := packs[len(packs)-1]
		p.ids, p.spool, p.size = append(p.ids, id), append(p.spool, sp), p.size+sp.size
	}
	s.mu.Unlock()

	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(s.opts.Jobs)
	for _, p := range packs {
		g.Go(func() error {
			buf := make([]byte, p.size)
			var off int64
			for _, sp := range p.spool {
				if _, err := s.spool.ReadAt(buf[off:off+sp.size], sp.off); err != nil {
					return fmt.Errorf("commit to %s: spool: %w", s.url, err)
				}
				off += sp.size
			}
			d := sha256Hash(buf)
			if err := s.putBlob(gctx, buf, MediaTypePack); err != nil {
				return fmt.Errorf("commit to %s: upload pack %s: %w", s.url, d, err)
			}
			s.mu.Lock()
			defer s.mu.Unlock()
			j, ok := s.packOf[d]
			if !ok {
				j = len(s.packs)
				s.packs = append(s.packs, pack{Digest: d, Size: p.size})
				s.packOf[d] = j
			}
			off = 0
			for i, id := range p.ids {
				if _, ok := s.chunks[id]; !ok {
					s.chunks[id] = loc{pack: j, off: off, size: p.spool[i].size}
				}
				off += p.spool[i].size
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return "", err
	}

	// The map of ids, with the packs in order of first use.
	m := chunkMap{MediaType: MediaTypeChunkMap, Digest: s.opts.Digest.String()}
	mine := map[int]int{}
	s.mu.Lock()
	for _, id := range order {
		l := s.chunks[id]
		j, ok := mine[l.pack]
		if !ok {
			j = len(m.Packs)
			mine[l.pack] = j
			m.Packs = append(m.Packs, s.packs[l.pack])
		}
		m.Chunks = append(m.Chunks, mapEntry{ID: id, Pack: j, Off: l.off, Size: l.size})
	}
	s.mu.Unlock()
	b, err := json.Marshal(m)
	if err != nil {
		return "", fmt.Errorf("commit to %s: encode chunk map: %w", s.url, err)
	}
	d := sha256Hash(b)
	if err := s.putBlob(ctx, b, MediaTypeChunkMap); err != nil {
		return "", fmt.Errorf("commit to %s: upload chunk map: %w", s.url, err)
	}
	if !s.opts.DeferKeepAlive {
		if _, err := s.putKeepAlive(ctx, &m, d, int64(len(b)), nil, mapTagPrefix+d.Hex); err != nil {
			return "", err
		}
	}
	return URL(s.repo, d), nil
}

// putBlob uploads b unless the repository has it.
func (s *Store) putBlob(ctx context.Context, b []byte, mt types.MediaType) error {
	return explain(remote.WriteLayer(s.repo, static.NewLayer(b, mt), s.remoteOpts(ctx)...), s.opts.AuthFile)
}

// putKeepAlive tags a manifest whose config is the chunk map m (digest
// d, size n) and whose layers are its packs, so garbage collection keeps
// them, with subject if given.
func (s *Store) putKeepAlive(ctx context.Context, m *chunkMap, d v1.Hash, n int64, subject *v1.Descriptor, tag string) (v1.Hash, error) {
	man := v1.Manifest{
		SchemaVersion: 2,
		MediaType:     types.OCIManifestSchema1,
		Config:        v1.Descriptor{MediaType: MediaTypeChunkMap, Digest: d, Size: n},
		Layers:        make([]v1.Descriptor, len(m.Packs)),
		Subject:       subject,
		Annotations:   map[string]string{"org.opencontainers.artifact.type": ArtifactType},
	}
	for i, p := range m.Packs {
		man.Layers[i] = v1.Descriptor{MediaType: MediaTypePack, Digest: p.Digest, Size: p.Size}
	}
	raw, err := json.Marshal(man)
	if err != nil {
		return v1.Hash{}, err
	}
	if err := remote.Put(s.repo.Tag(tag), rawManifest{raw, types.OCIManifestSchema1}, s.remoteOpts(ctx)...); err != nil {
		return v1.Hash{}, fmt.Errorf("tag the chunks' keep-alive manifest %s:%s: %w", s.repo, tag, explain(err, s.opts.AuthFile))
	}
	return sha256Hash(raw), nil
}

type rawManifest struct {
	raw []byte
	mt  types.MediaType
}

func (r rawManifest) RawManifest() ([]byte, error)        { return r.raw, nil }
func (r rawManifest) MediaType() (types.MediaType, error) { return r.mt, nil }

// PushBootImage pushes the boot image in the docker-save archive at path
// to the repository as tag, then the keep-alive manifest of the chunk map
// that mapURL pins (Commit's result), with the boot image as subject and
// tagged SubjectTag(its digest). It returns the boot image's manifest
// digest.
func (s *Store) PushBootImage(ctx context.Context, path, tag, mapURL string) (v1.Hash, error) {
	ref, err := ParseRef(mapURL, s.opts)
	if err != nil {
		return v1.Hash{}, err
	}
	if ref.Digest == (v1.Hash{}) {
		return v1.Hash{}, fmt.Errorf("push boot image: %s pins no chunk map", mapURL)
	}
	mb, err := s.readBlob(ctx, ref.Digest, maxMapSize)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("push boot image: chunk map %s: %w", ref.Digest, err)
	}
	m, err := parseChunkMap(mb)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("push boot image: %w", err)
	}
	img, err := tarball.ImageFromPath(path, nil)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("push boot image: read %s: %w", path, err)
	}
	t := s.repo.Tag(tag)
	if err := remote.Write(t, img, s.remoteOpts(ctx)...); err != nil {
		return v1.Hash{}, fmt.Errorf("push boot image %s: %w", t, explain(err, s.opts.AuthFile))
	}
	d, err := img.Digest()
	if err != nil {
		return v1.Hash{}, err
	}
	raw, err := img.RawManifest()
	if err != nil {
		return v1.Hash{}, err
	}
	mt, err := img.MediaType()
	if err != nil {
		return v1.Hash{}, err
	}
	subject := &v1.Descriptor{MediaType: mt, Digest: d, Size: int64(len(raw))}
	if _, err := s.putKeepAlive(ctx, m, ref.Digest, int64(len(mb)), subject, SubjectTag(d)); err != nil {
		return v1.Hash{}, err
	}
	return d, nil
}
