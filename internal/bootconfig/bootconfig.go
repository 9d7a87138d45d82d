package bootconfig

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/bootfs/bootfs/internal/inputfile"
)

// Version is the config.json format this package reads and writes. It
// changes whenever a field is added, removed or changes meaning; Load
// rejects every other version.
const Version = 1

// Paths inside a boot image.
const (
	Dir       = "/.bootfs"
	BootPath  = "/.bootfs/boot"
	Path      = "/.bootfs/config.json"
	IndexPath = "/.bootfs/rootfs.caidx"
	TOCPath   = "/.bootfs/rootfs.toc"
	CacheDir  = "/.bootfs/cache"
	// UpperDir holds the overlay's writable layer: the boot image
	// declares it a volume, so the container's writes live on disk,
	// survive a restart and go with the container, as Docker's own
	// writable layer does.
	UpperDir = "/.bootfs/upper"
	// LowerDir and RootDir are boot's mount points for the image and for
	// the workload's root. The boot image holds them, so boot makes no
	// directory on a read-only container root (docker run --read-only).
	LowerDir = "/.bootfs/lower"
	RootDir  = "/.bootfs/root"
)

// ErrInvalid is wrapped by every error Load and Validate return.
var ErrInvalid = errors.New("bootconfig: invalid config")

// Config is the content of /.bootfs/config.json. Marshal writes its keys in
// the order of the fields below, map keys sorted, so equal configs give
// equal bytes.
type Config struct {
	// Version is the format version, always Version.
	Version int `json:"version"`
	// BootfsVersion is the version of the mkimage that wrote the file.
	BootfsVersion string `json:"bootfs_version"`
	// Source is mkimage's SOURCE argument, and SourceImageID the image ID
	// of a Docker source ("" for dir: and tar: sources).
	Source        string `json:"source,omitempty"`
	SourceImageID string `json:"source_image_id,omitempty"`
	// Store is the chunk store URL, or a comma-separated failover list,
	// that boot reads at run time. It may be empty when the store is only
	// given at run time (BOOTFS_STORE).
	Store string `json:"store"`
	// Chunking records how the archive was cut.
	Chunking Chunking `json:"chunking"`
	// Index and TOC describe IndexPath and TOCPath.
	Index Blob `json:"index"`
	TOC   Blob `json:"toc"`
	// ArchiveSize is the size of the catar archive in bytes.
	ArchiveSize int64 `json:"archive_size"`
	// Prefetch lists chunk IDs (lowercase hex) that boot fetches first,
	// in this order.
	Prefetch []string `json:"prefetch,omitempty"`
	// Image is the source image's configuration, which boot applies to
	// the workload.
	Image Image `json:"image"`
}

// Chunking holds the chunker parameters of an index.
type Chunking struct {
	// Chunker is "buzhash" (casync's) or "rabin".
	Chunker string `json:"chunker"`
	// Digest is the chunk ID hash: "sha512-256" or "sha256".
	Digest string `json:"digest"`
	// Min, Avg and Max are the chunk sizes in bytes.
	Min uint64 `json:"min"`
	Avg uint64 `json:"avg"`
	Max uint64 `json:"max"`
}

// Blob identifies a file by its digest ("sha256:<64 hex>") and size.
type Blob struct {
	Digest string `json:"digest"`
	Size   int64  `json:"size"`
}

// Image is the part of a Docker image configuration that boot applies to
// the workload. An empty field means the image did not set it.
type Image struct {
	Entrypoint []string `json:"entrypoint,omitempty"`
	Cmd        []string `json:"cmd,omitempty"`
	// Env holds NAME=value pairs.
	Env        []string `json:"env,omitempty"`
	WorkingDir string   `json:"working_dir,omitempty"`
	User       string   `json:"user,omitempty"`
	// Volumes are absolute paths, and ExposedPorts are "port/proto"; Marshal
	// sorts both.
	Volumes      []string          `json:"volumes,omitempty"`
	ExposedPorts []string          `json:"exposed_ports,omitempty"`
	Labels       map[string]string `json:"labels,omitempty"`
	StopSignal   string            `json:"stop_signal,omitempty"`
	Healthcheck  *Healthcheck      `json:"healthcheck,omitempty"`
}

// Healthcheck is Docker's health check. Durations are nanoseconds in JSON,
// as in Docker's own configuration.
type Healthcheck struct {
	Test          []string      `json:"test,omitempty"`
	Interval      time.Duration `json:"interval,omitempty"`
	Timeout       time.Duration `json:"timeout,omitempty"`
	StartPeriod   time.Duration `json:"start_period,omitempty"`
	StartInterval time.Duration `json:"start_interval,omitempty"`
	Retries       int           `json:"retries,omitempty"`
}

// MaxSize is the largest config.json ReadFile reads: 64 MiB, room for a
// prefetch list of about a million chunk IDs (64 GiB of chunks at casync's
// 64 KiB average) besides the image's configuration, and far less than
// boot can hold.
const MaxSize = 64 << 20

// ReadFile reads and loads the config.json at name. It refuses a symlink,
// a FIFO, a device or anything else that is not a regular file, and a file
// over MaxSize, before it reads anything.
func ReadFile(name string) (*Config, error) {
	b, err := inputfile.ReadFile(name, MaxSize)
	if err != nil {
		return nil, fmt.Errorf("bootconfig: %w", err)
	}
	return Load(b)
}

// Load parses and validates a config.json. Unknown fields are an error:
// boot and the config it reads come from the same mkimage, so an unknown
// field means a mismatch, not a newer minor format.
func Load(data []byte) (*Config, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var c Config
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%w: data after the JSON object", ErrInvalid)
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// Marshal validates c and encodes it as indented JSON ending in a newline,
// with Volumes and ExposedPorts sorted. It does not modify c.
func (c *Config) Marshal() ([]byte, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	n := *c
	n.Image.Volumes = sortedCopy(c.Image.Volumes)
	n.Image.ExposedPorts = sortedCopy(c.Image.ExposedPorts)
	b, err := json.MarshalIndent(&n, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("bootconfig: encode: %w", err)
	}
	return append(b, '\n'), nil
}

func sortedCopy(s []string) []string {
	if s == nil {
		return nil
	}
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

// Validate checks every field that boot relies on. Its errors wrap
// ErrInvalid and name the offending field.
func (c *Config) Validate() error {
	if err := c.validate(); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	return nil
}

func (c *Config) validate() error {
	switch {
	case c.Version == 0:
		return errors.New("no version")
	case c.Version != Version:
		return fmt.Errorf("version %d is not supported (this build reads version %d; convert the image again with a matching mkimage)", c.Version, Version)
	}
	if c.Store != "" {
		for u := range strings.SplitSeq(c.Store, ",") {
			if strings.TrimSpace(u) == "" {
				return fmt.Errorf("store %q: empty element in the URL list", c.Store)
			}
		}
	}
	if err := c.Chunking.validate(); err != nil {
		return err
	}
	if err := c.Index.validate("index"); err != nil {
		return err
	}
	if err := c.TOC.validate("toc"); err != nil {
		return err
	}
	if c.ArchiveSize < 0 {
		return fmt.Errorf("archive_size %d is negative", c.ArchiveSize)
	}
	for i, id := range c.Prefetch {
		if !isHex(id, 64) {
			return fmt.Errorf("prefetch[%d] %q: want a chunk ID of 64 lowercase hex digits", i, id)
		}
	}
	return c.Image.validate()
}

// chunkSizeLimitMax is casync's CA_CHUNK_SIZE_LIMIT_MAX.
const chunkSizeLimitMax = 128 << 20

func (ch *Chunking) validate() error {
	switch ch.Chunker {
	case "buzhash", "rabin":
	default:
		return fmt.Errorf("chunking.chunker %q: want buzhash or rabin", ch.Chunker)
	}
	switch ch.Digest {
	case "sha512-256", "sha256":
	default:
		return fmt.Errorf("chunking.digest %q: want sha512-256 or sha256", ch.Digest)
	}
	if ch.Min < 1 || ch.Min > ch.Avg || ch.Avg > ch.Max || ch.Max > chunkSizeLimitMax {
		return fmt.Errorf("chunking sizes %d:%d:%d: want 1 <= min <= avg <= max <= %d", ch.Min, ch.Avg, ch.Max, chunkSizeLimitMax)
	}
	return nil
}

func (b *Blob) validate(field string) error {
	hexPart, ok := strings.CutPrefix(b.Digest, "sha256:")
	if !ok || !isHex(hexPart, 64) {
		return fmt.Errorf("%s.digest %q: want sha256:<64 lowercase hex digits>", field, b.Digest)
	}
	if b.Size <= 0 {
		return fmt.Errorf("%s.size %d: want a positive size", field, b.Size)
	}
	return nil
}

func (im *Image) validate() error {
	for i, kv := range im.Env {
		name, _, ok := strings.Cut(kv, "=")
		if !ok || name == "" {
			return fmt.Errorf("image.env[%d] %q: want NAME=value", i, kv)
		}
	}
	for i, v := range im.Volumes {
		if !strings.HasPrefix(v, "/") {
			return fmt.Errorf("image.volumes[%d] %q: want an absolute path", i, v)
		}
	}
	for i, p := range im.ExposedPorts {
		if p == "" {
			return fmt.Errorf("image.exposed_ports[%d] is empty", i)
		}
	}
	if h := im.Healthcheck; h != nil {
		if h.Interval < 0 || h.Timeout < 0 || h.StartPeriod < 0 || h.StartInterval < 0 || h.Retries < 0 {
			return fmt.Errorf("image.healthcheck: negative duration or retries")
		}
	}
	return nil
}

func isHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
