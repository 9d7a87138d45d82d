package mkimage

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/chunkstore"
	"github.com/bootfs/bootfs/chunkstore/registry"
)

// PushStore returns the store URL of the repository of ref
// (REGISTRY/REPO:TAG): the store that mkimage --push converts into, opened
// with registry.Options.DeferKeepAlive, so that the keep-alive manifest
// of the chunks waits for PushBootImage to give it the boot image as its
// subject.
func PushStore(ref string) (string, error) {
	t, err := name.NewTag(ref, name.StrictValidation)
	if err != nil {
		return "", fmt.Errorf("push %q: want REGISTRY/REPOSITORY:TAG: %w", ref, err)
	}
	return "oci://" + t.RegistryStr() + "/" + t.RepositoryStr(), nil
}

// commitStore commits the chunks of idx to store if it is a
// chunkstore.Committer (a registry store, through the decorators the
// opener put around it), and returns the store URL a boot image should
// read then, or "".
func commitStore(ctx context.Context, store chunkstore.WriteStore, idx *casync.Index) (string, error) {
	ids := make([]casync.ChunkID, len(idx.Chunks))
	for i, ch := range idx.Chunks {
		ids[i] = ch.ID
	}
	return chunkstore.Commit(ctx, store, ids)
}

// PushBootImage builds the boot image of a conversion whose chunks went
// to the repository of ref (Options.Store from PushStore), pushes it there
// as ref, and pushes the chunks' keep-alive manifest with it as subject.
// The image's store is the repository, its chunk map pinned. The
// repository is opened with ro (the caller's credentials; Write is set
// here).
func PushBootImage(ctx context.Context, sum *Summary, opts Options, bo BootImageOptions, ref string, ro registry.Options) (BootImageInfo, error) {
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
	ro.Write = true
	s, err := registry.New(ctx, "oci://"+t.RegistryStr()+"/"+t.RepositoryStr(), ro)
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
