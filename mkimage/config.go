package mkimage

import (
	"fmt"
	"maps"
	"slices"

	dockerspec "github.com/moby/docker-image-spec/specs-go/v1"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/internal/bootconfig"
	"github.com/bootfs/bootfs/internal/version"
)

// BootConfig is the content of a boot image's /.bootfs/config.json. The
// type lives in internal/bootconfig so that boot can read it without
// importing mkimage.
type BootConfig = bootconfig.Config

// LoadBootConfig parses and validates a config.json; its errors wrap
// bootconfig.ErrInvalid.
func LoadBootConfig(data []byte) (*BootConfig, error) { return bootconfig.Load(data) }

// NewBootConfig returns the config.json of the boot image for a finished
// conversion: sum is Convert's result for opts, runtimeStore the store that
// boot reads at run time, and img the source image's configuration (nil
// for dir: and tar: sources). The index and TOC digests and sizes are left
// for BuildBootImage, which fills them from the bytes it packs.
func NewBootConfig(sum *Summary, opts Options, runtimeStore string, img *dockerspec.DockerOCIImageConfig) (*BootConfig, error) {
	if sum == nil || sum.Index == nil {
		return nil, fmt.Errorf("boot config: the conversion summary has no index")
	}
	chunker, err := casync.ParseChunkerKind(string(opts.Chunker))
	if err != nil {
		return nil, fmt.Errorf("boot config: %w", err)
	}
	c := &BootConfig{
		Version:       bootconfig.Version,
		BootfsVersion: version.Version,
		Source:        sum.Source,
		SourceImageID: sum.SourceID,
		Store:         runtimeStore,
		Chunking: bootconfig.Chunking{
			Chunker: string(chunker),
			Digest:  sum.Index.Digest().String(),
			Min:     sum.Index.ChunkSizeMin,
			Avg:     sum.Index.ChunkSizeAvg,
			Max:     sum.Index.ChunkSizeMax,
		},
		ArchiveSize: sum.Bytes,
		Image:       imageFields(img),
	}
	return c, nil
}

// imageFields copies what boot needs of a Docker image configuration.
func imageFields(img *dockerspec.DockerOCIImageConfig) bootconfig.Image {
	if img == nil {
		return bootconfig.Image{}
	}
	im := bootconfig.Image{
		Entrypoint:   slices.Clone(img.Entrypoint),
		Cmd:          slices.Clone(img.Cmd),
		Env:          slices.Clone(img.Env),
		WorkingDir:   img.WorkingDir,
		User:         img.User,
		Volumes:      sortedKeys(img.Volumes),
		ExposedPorts: sortedKeys(img.ExposedPorts),
		Labels:       maps.Clone(img.Labels),
		StopSignal:   img.StopSignal,
	}
	if h := img.Healthcheck; h != nil {
		im.Healthcheck = &bootconfig.Healthcheck{
			Test:          slices.Clone(h.Test),
			Interval:      h.Interval,
			Timeout:       h.Timeout,
			StartPeriod:   h.StartPeriod,
			StartInterval: h.StartInterval,
			Retries:       h.Retries,
		}
	}
	return im
}

func sortedKeys[V any](m map[string]V) []string {
	if len(m) == 0 {
		return nil
	}
	return slices.Sorted(maps.Keys(m))
}
