package mkimage

import (
	"context"
	"errors"
	"reflect"
	"testing"
	"time"

	dockerspec "github.com/moby/docker-image-spec/specs-go/v1"

	"github.com/bootfs/bootfs/casync"
	"github.com/bootfs/bootfs/internal/bootconfig"
	"github.com/bootfs/bootfs/internal/version"
)

func TestNewBootConfig(t *testing.T) {
	full := &dockerspec.DockerOCIImageConfig{}
	full.Entrypoint = []string{"/e"}
	full.Cmd = []string{"c"}
	full.Env = []string{"A=1"}
	full.User = "u"
	full.WorkingDir = "/w"
	full.Volumes = map[string]struct{}{"/v2": {}, "/v1": {}}
	full.ExposedPorts = map[string]struct{}{"81/udp": {}, "80/tcp": {}}
	full.Labels = map[string]string{"l": "v"}
	full.StopSignal = "SIGTERM"
	full.Healthcheck = &dockerspec.HealthcheckConfig{Test: []string{"NONE"}, Timeout: time.Second, StartPeriod: 2 * time.Second, StartInterval: 3 * time.Second, Retries: 4}

	for _, tc := range []struct {
		name      string
		opts      Options
		img       *dockerspec.DockerOCIImageConfig
		wantChunk bootconfig.Chunking
		wantImage bootconfig.Image
	}{
		{"defaults, no image config", Options{},
			nil,
			bootconfig.Chunking{Chunker: "buzhash", Digest: "sha512-256", Min: 16 << 10, Avg: 64 << 10, Max: 256 << 10},
			bootconfig.Image{}},
		{"rabin sha256, full image config",
			Options{Chunker: casync.Rabin, Digest: casync.SHA256, ChunkSize: casync.ChunkSize{Min: 4 << 10, Avg: 16 << 10, Max: 64 << 10}},
			full,
			bootconfig.Chunking{Chunker: "rabin", Digest: "sha256", Min: 4 << 10, Avg: 16 << 10, Max: 64 << 10},
			bootconfig.Image{Entrypoint: []string{"/e"}, Cmd: []string{"c"}, Env: []string{"A=1"}, User: "u", WorkingDir: "/w",
				Volumes: []string{"/v1", "/v2"}, ExposedPorts: []string{"80/tcp", "81/udp"}, Labels: map[string]string{"l": "v"}, StopSignal: "SIGTERM",
				Healthcheck: &bootconfig.Healthcheck{Test: []string{"NONE"}, Timeout: time.Second, StartPeriod: 2 * time.Second, StartInterval: 3 * time.Second, Retries: 4}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := Source{Kind: "dir", Path: tinyTree(t, "cfg")}
			sum, err := Convert(context.Background(), src, nil, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			c, err := NewBootConfig(sum, tc.opts, "ssh://store/x", tc.img)
			if err != nil {
				t.Fatalf("NewBootConfig() = %v", err)
			}
			if c.Version != bootconfig.Version || c.BootfsVersion != version.Version || c.Source != src.String() || c.Store != "ssh://store/x" || c.ArchiveSize != sum.Bytes {
				t.Errorf("NewBootConfig() = %+v", c)
			}
			if c.Chunking != tc.wantChunk {
				t.Errorf("Chunking = %+v, want %+v", c.Chunking, tc.wantChunk)
			}
			if !reflect.DeepEqual(c.Image, tc.wantImage) {
				t.Errorf("Image = %+v, want %+v", c.Image, tc.wantImage)
			}
			// Index and TOC are BuildBootImage's to fill: until then the
			// config is incomplete.
			if _, err := c.Marshal(); !errors.Is(err, bootconfig.ErrInvalid) {
				t.Errorf("Marshal() before the index is known = %v, want ErrInvalid", err)
			}
		})
	}
	full.Env[0] = "B=2"
	full.Labels["l"] = "changed"
	// NewBootConfig copied, so later edits of the source do not leak in.
	sum := &Summary{Index: casync.NewIndex(0, casync.ChunkOptions{})}
	c, err := NewBootConfig(sum, Options{}, "", full)
	if err != nil {
		t.Fatal(err)
	}
	full.Env[0] = "C=3"
	full.Labels["l"] = "again"
	if c.Image.Env[0] != "B=2" || c.Image.Labels["l"] != "changed" {
		t.Errorf("NewBootConfig shares slices or maps with its input: env %q labels %q", c.Image.Env, c.Image.Labels)
	}
	if _, err := NewBootConfig(&Summary{}, Options{}, "", nil); err == nil {
		t.Error("NewBootConfig(summary without index) succeeded")
	}
}
