package mkimage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
	"github.com/bootfs/bootfs/chunkstore/registry"
)

// RegistryOptions configure oci:// stores and pushing a boot image.
// Fields map one to one to mkimage's flags.
type RegistryOptions struct {
	// AuthFile is a docker config.json-format file of registry
	// credentials (--registry-auth); "" means anonymous.
	AuthFile string
	// PlainHTTP allows plain HTTP to a registry that is not on a loopback
	// address (--registry-plain-http).
	PlainHTTP bool
	// Push is set by PushStore: the keep-alive manifest of the chunks
	// waits for the boot image, its subject.
	push bool
}

func (o *Options) registryOptions(write bool) registry.Options {
	return registry.Options{
		AuthFile:       o.Registry.AuthFile,
		CAFile:         o.StoreCAFile,
		PlainHTTP:      o.Registry.PlainHTTP,
		Write:          write,
		Digest:         o.Digest,
		TrustWrites:    true,
		DeferKeepAlive: o.Registry.push,
		Jobs:           max(o.Jobs, 4),
		TempDir:        o.TempDir,
		Logger:         o.Log,
	}
}

// DefaultRegistryAuth is ~/.docker/config.json when it exists, else "".
func DefaultRegistryAuth() string {
	home, err := os.UserHomeDir()
	if err != nil {
		return ""
	}
	name := filepath.Join(home, ".docker", "config.json")
	if _, err := os.Stat(name); err != nil {
		return ""
	}
	return name
}

// PushStore returns the store URL of the repository of ref
// (REGISTRY/REPO:TAG), for Options.Store, and marks opts for
// PushBootImage.
func PushStore(ref string, opts *Options) (string, error) {
	t, err := name.NewTag(ref, name.StrictValidation)
	if err != nil {
		return "", fmt.Errorf("push %q: want REGISTRY/REPOSITORY:TAG: %w", ref, err)
	}
	opts.Registry.push = true
	return "oci://" + t.RegistryStr() + "/" + t.RepositoryStr(), nil
}

// committer is a store that publishes what was written only when told
// which chunks an image needs: the registry store.
type committer interface {
	Commit(ctx context.Context, ids []casync.ChunkID) (string, error)
}

// commitStore commits the chunks of idx to store if it is a registry
// store, and returns the store URL a boot image should read then.
func commitStore(ctx context.Context, store chunkstore.WriteStore, idx *casync.Index) (string, error) {
	c, ok := store.(committer)
	if !ok {
		return "", nil
	}
	ids := make([]casync.ChunkID, len(idx.Chunks))
	for i, ch := range idx.Chunks {
		ids[i] = ch.ID
	}
	return c.Commit(ctx, ids)
}

// checkRegistryList refuses an oci:// store inside a --store list: its
// chunks are published by a commit that a failover list cannot pass on.
func checkRegistryList(spec string) error {
	locs, err := chunkstore.ParseURLs(spec)
	if err != nil || len(locs) < 2 {
		return nil
	}
	for _, l := range locs {
		if l.Scheme == "oci" {
			return errors.New("an oci:// store cannot be part of a --store list; write to it alone (boot reads it in a list)")
		}
	}
	return nil
}

// PushBootImage builds the boot image of a conversion whose chunks went
// to the repository of ref (Options.Store from PushStore), pushes it there
// as ref, and pushes the chunks' keep-alive manifest with it as subject.
// The image's store is the repository, its chunk map pinned.
func PushBootImage(ctx context.Context, sum *Summary, opts Options, bo BootImageOptions, ref string) (BootImageInfo, error) {
	t, err := name.NewTag(ref, name.StrictValidation)
	if err != nil {
		return BootImageInfo{}, fmt.Errorf("push %q: %w", ref, err)
	}
	if sum.RuntimeStore == "" {
		return BootImageInfo{}, fmt.Errorf("push %s: the chunks were not committed to a registry store", ref)
	}
	dir, err := os.MkdirTemp(opts.TempDir, "mkimage-push-")
	if err != nil {
		return BootImageInfo{}, err
	}
	defer os.RemoveAll(dir)
	bo.Output, bo.Tags = filepath.Join(dir, "boot.tar"), []string{ref}
	info, err := MakeBootImage(ctx, sum, opts, bo)
	if err != nil {
		return BootImageInfo{}, err
	}
	s, err := registry.New(ctx, "oci://"+t.RegistryStr()+"/"+t.RepositoryStr(), opts.registryOptions(true))
	if err != nil {
		return BootImageInfo{}, fmt.Errorf("push %s: %w", ref, err)
	}
	defer s.Close()
	d, err := s.PushBootImage(ctx, bo.Output, t.TagStr(), sum.RuntimeStore)
	if err != nil {
		return BootImageInfo{}, err
	}
	info.ManifestDigest = d.String()
	info.Tags = []string{ref}
	return info, nil
}
