package harness

import (
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/bootfs/bootfs/bench/shaper"
)

// Options configure Run. Each field maps to one flag of benchrun.
type Options struct {
	// Bin holds the built mkimage, boot and chunkstore (make build).
	Bin string
	// Module is the repository root: bench/rootfs.sh is found there and
	// the conversion benchmark (go test ./bench) runs there.
	Module string
	// Work is a scratch directory for stores, indexes and image tars;
	// it is removed at the end unless Keep is set.
	Work string
	// Out is where the report and charts go (bench/results).
	Out string
	// Samples is how many times every (image, network, mode) is run.
	Samples int
	// CasyncSamples caps the samples of the casync-mount mode (default
	// 1): it is the slowest by far (minutes for postgres at 20 ms), and
	// its one run is enough to show where it stands; 0 means Samples.
	CasyncSamples int
	// Images, Modes and Networks select what to run (nil: the defaults;
	// see Workloads, DefaultModes and Networks).
	Images, Modes, Networks []string
	// Extras selects the other measurements: "convert", "dedup",
	// "chunkers", "fuse", "pgversion", "node" (nil: all that apply).
	Extras []string
	// Quick is BENCH_QUICK=1: the busybox image only, one sample, loopback
	// and the slowest network, and no Go conversion benchmark.
	Quick bool
	// Keep leaves the scratch directory and the images in place.
	Keep bool
	// Seed orders the runs; 0 takes the time.
	Seed int64
	// Log receives progress lines; nil discards them.
	Log io.Writer
}

// Modes.
const (
	// ModeRegistry is the baseline: docker pull from a registry.
	ModeRegistry = "registry-pull"
	// ModeEstargz and ModeEstargzOpt are the lazy-pull peer, eStargz
	// through stargz-snapshotter, without and with the workload's
	// prefetch optimization.
	ModeEstargz    = "estargz"
	ModeEstargzOpt = "estargz-optimized"
	ModeCold       = "bootfs-cold"
	// ModeBootfsRegistry is bootfs cold with the registry as its store:
	// the boot image pulled from the registry (mkimage --push), its
	// chunks read from the same repository.
	ModeBootfsRegistry = "bootfs-registry"
	// ModeAgent is bootfs cold through the node agent: bootfs-agent
	// serves the container's filesystem, which runs unprivileged.
	ModeAgent    = "bootfs-agent"
	ModePrefetch = "bootfs-prefetch"
	ModeWarm     = "bootfs-warm"
	ModeCasync   = "casync-mount"
	// ModeSaveLoad is a pull without a registry: docker save's archive
	// over one HTTP stream into docker load. Not run unless asked.
	ModeSaveLoad = "save-load"
)

// AllModes lists the modes in report order.
var AllModes = []string{ModeRegistry, ModeEstargz, ModeEstargzOpt, ModeCold, ModeBootfsRegistry, ModeAgent, ModePrefetch, ModeWarm, ModeCasync, ModeSaveLoad}

// DefaultModes are the modes a run without MODES runs: all but save-load,
// which the registry pull replaces as the baseline.
var DefaultModes = AllModes[:len(AllModes)-1]

// Network is a network condition between the node and the servers.
type Network struct {
	Name string
	// RTT and BitsPerSecond shape the link; both zero is plain loopback
	// with no proxy.
	RTT           time.Duration
	BitsPerSecond int64
	// Images and Modes, when set, are the only cells run on this
	// network: a slow network measures what its goals need and no more,
	// so that a default run stays within its time.
	Images, Modes []string
	// Asked is a network a default run leaves out (NETWORKS=… with it
	// runs it): it would take the run over its 30 minutes and shows
	// little that loopback and 20 ms do not.
	Asked bool
	// SlowModes are modes run on this network only for SlowImages: casync
	// mount of a big image at 20 ms takes minutes and shows no more than
	// the small images and the faster networks show.
	SlowModes, SlowImages []string
}

// Runs reports whether the cell of img in mode is run on n.
func (n Network) Runs(img, mode string) bool {
	switch {
	case n.Images != nil && !slices.Contains(n.Images, img):
		return false
	case n.Modes != nil && !slices.Contains(n.Modes, mode):
		return false
	case slices.Contains(n.SlowModes, mode) && !slices.Contains(n.SlowImages, img):
		return false
	}
	return true
}

// Shaped reports whether the network needs a proxy.
func (n Network) Shaped() bool { return n.RTT > 0 || n.BitsPerSecond > 0 }

// Options returns the proxy options for n.
func (n Network) Options() shaper.Options { return shaper.Symmetric(n.RTT, n.BitsPerSecond) }

// Networks are the conditions the issue asks for.
var Networks = []Network{
	{Name: "loopback"},
	{Name: "2ms-1gbit", RTT: 2 * time.Millisecond, BitsPerSecond: 1_000_000_000, Asked: true},
	{Name: "20ms-100mbit", RTT: 20 * time.Millisecond, BitsPerSecond: 100_000_000,
		SlowModes: []string{ModeCasync}, SlowImages: []string{"debian-min", "python", "busybox"}},
	// A far registry (issue 20): bootfs cold against the registry pull,
	// postgres only.
	{Name: "100ms-100mbit", RTT: 100 * time.Millisecond, BitsPerSecond: 100_000_000,
		Images: []string{"postgres"}, Modes: []string{ModeRegistry, ModeCold}},
}

// Workload is an image and what to run in it.
type Workload struct {
	Name string
	// Rootfs and Packages are bench/rootfs.sh's arguments; an empty
	// Rootfs means the busybox tree (quick mode).
	Rootfs, Packages string
	// Changes are docker import's -c lines (CMD, USER, ENV).
	Changes []string
	// Argv is the command, given to docker run after the image and to
	// chroot in casync mode.
	Argv []string
	// User is the image's user, for chroot --userspec in casync mode.
	User string
	// Stdin is fed to the workload.
	Stdin string
	// Ready, when set, marks a server: it is ready when a line of its
	// output matches, and is then stopped. Otherwise it is ready when it
	// exits with status 0.
	Ready *regexp.Regexp
	// Want must appear in the output of a run that counts.
	Want string
}

const postgresBin = "/usr/lib/postgresql/15/bin/postgres"

// Workloads are the HelloBench-style workloads; "busybox" is quick mode's.
var Workloads = []Workload{
	{
		Name: "debian-min", Rootfs: "min",
		Changes: []string{`CMD ["/bin/bash"]`},
		Argv:    []string{"cat", "/etc/os-release"},
		Want:    "bookworm",
	},
	{
		Name: "python", Rootfs: "python", Packages: "python3",
		Changes: []string{`CMD ["python3"]`},
		Argv:    []string{"python3", "-c", `import json, sqlite3; print("hello")`},
		Want:    "hello",
	},
	{
		// The same tree as make bench's BenchmarkConvertDir.
		Name: "gcc", Rootfs: "gcc", Packages: "python3,gcc,libc6-dev",
		Changes: []string{`CMD ["/bin/bash"]`},
		Argv:    []string{"sh", "-c", "gcc -x c -o /tmp/hello - && /tmp/hello"},
		Stdin:   "#include <stdio.h>\nint main(void) { puts(\"hello, world\"); return 0; }\n",
		Want:    "hello, world",
	},
	{
		// Debian's cluster 15/main, made by the package's postinst; no
		// TCP listener, so runs never fight over port 5432. Its socket
		// goes to /tmp: containerd's default spec (ctr run, the eStargz
		// modes) mounts an empty tmpfs on /run, which hides the
		// package's /run/postgresql, and the same command must run
		// everywhere.
		Name: "postgres", Rootfs: "postgres", Packages: "postgresql",
		Changes: []string{"USER postgres", `CMD ["` + postgresBin + `"]`},
		Argv: []string{postgresBin, "-D", "/var/lib/postgresql/15/main",
			"-c", "config_file=/etc/postgresql/15/main/postgresql.conf", "-c", "listen_addresses=", "-c", "unix_socket_directories=/tmp"},
		User:  "postgres",
		Ready: regexp.MustCompile(`database system is ready to accept connections`),
		Want:  "ready to accept connections",
	},
	{
		Name:    "busybox",
		Changes: []string{`CMD ["/bin/sh"]`},
		Argv:    []string{"sh", "-c", "cat /etc/os-release && ls /bin | wc -l"},
		Want:    "bootfs bench busybox",
	},
}

// AllExtras lists the extra measurements in report order.
var AllExtras = []string{"convert", "dedup", "chunkers", "fuse", "pgversion", "node"}

// DefaultExtras are those a run makes unless told: all but chunkers
// (buzhash against Rabin, settled before the registry, eStargz and node
// measurements came), whose 2–3 minutes would take the default run over
// its 30; EXTRAS=chunkers runs it.
var DefaultExtras = []string{"convert", "dedup", "fuse", "pgversion", "node"}

// resolve fills in defaults and checks the selection.
func (o *Options) resolve() error {
	if !validPrefix.MatchString(prefix) {
		return fmt.Errorf("BENCH_PREFIX %q: use lowercase letters, digits and single '.', '_' or '-' between them, as Docker repository names do", prefix)
	}
	if o.Samples <= 0 {
		o.Samples = 2
	}
	if o.CasyncSamples <= 0 || o.CasyncSamples > o.Samples {
		o.CasyncSamples = o.Samples
	}
	if o.Quick {
		if o.Images == nil {
			o.Images = []string{"busybox"}
		}
		if o.Networks == nil {
			o.Networks = []string{"loopback", "20ms-100mbit"}
		}
		if o.Extras == nil {
			o.Extras = []string{"dedup", "chunkers", "fuse", "node"}
		}
	}
	if o.Images == nil {
		o.Images = []string{"debian-min", "python", "gcc", "postgres"}
	}
	if o.Modes == nil {
		o.Modes = DefaultModes
		if o.Quick {
			o.Modes = slices.DeleteFunc(slices.Clone(DefaultModes), func(m string) bool { return m == ModeEstargz || m == ModeEstargzOpt })
		}
	}
	if o.Networks == nil {
		for _, n := range Networks {
			if !n.Asked {
				o.Networks = append(o.Networks, n.Name)
			}
		}
	}
	if o.Extras == nil {
		o.Extras = DefaultExtras
	}
	for _, im := range o.Images {
		if _, err := workload(im); err != nil {
			return err
		}
	}
	for _, m := range o.Modes {
		if !slices.Contains(AllModes, m) {
			return fmt.Errorf("unknown mode %q: want one of %s", m, strings.Join(AllModes, ", "))
		}
	}
	for _, n := range o.Networks {
		if _, err := network(n); err != nil {
			return err
		}
	}
	for _, x := range o.Extras {
		if !slices.Contains(AllExtras, x) {
			return fmt.Errorf("unknown extra measurement %q: want one of %s", x, strings.Join(AllExtras, ", "))
		}
	}
	if o.Bin == "" || o.Work == "" || o.Out == "" {
		return fmt.Errorf("the binaries, scratch and output directories must be set")
	}
	return nil
}

func workload(name string) (Workload, error) {
	for _, w := range Workloads {
		if w.Name == name {
			return w, nil
		}
	}
	var names []string
	for _, w := range Workloads {
		names = append(names, w.Name)
	}
	return Workload{}, fmt.Errorf("unknown image %q: want one of %s", name, strings.Join(names, ", "))
}

func network(name string) (Network, error) {
	for _, n := range Networks {
		if n.Name == name {
			return n, nil
		}
	}
	var names []string
	for _, n := range Networks {
		names = append(names, n.Name)
	}
	return Network{}, fmt.Errorf("unknown network %q: want one of %s", name, strings.Join(names, ", "))
}
