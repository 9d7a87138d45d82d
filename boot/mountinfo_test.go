package boot

import (
	"errors"
	"os"
	"slices"
	"strings"
	"testing"
)

// testMountInfo is a container's /proc/self/mountinfo as Docker 20.10
// makes it, with a named volume, a bind mount with a space in its path,
// a read-only bind, the cache volume and a tmpfs.
const testMountInfo = `1201 1105 0:93 / / rw,relatime master:361 - overlay overlay rw,lowerdir=/var/lib/docker/overlay2/l/A:/var/lib/docker/overlay2/l/B,upperdir=/var/lib/docker/overlay2/x/diff,workdir=/var/lib/docker/overlay2/x/work
1202 1201 0:96 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
1203 1201 0:97 / /dev rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755
1204 1203 0:98 / /dev/pts rw,nosuid,noexec,relatime - devpts devpts rw,gid=5,mode=620,ptmxmode=666
1205 1201 0:99 / /sys ro,nosuid,nodev,noexec,relatime - sysfs sysfs ro
1206 1203 0:95 / /dev/mqueue rw,nosuid,nodev,noexec,relatime - mqueue mqueue rw
1207 1201 254:1 /var/lib/docker/volumes/bootfs-cache/_data /.bootfs/cache rw,relatime master:1 - ext4 /dev/vda1 rw
1208 1201 254:1 /var/lib/docker/volumes/data/_data /data rw,relatime master:1 - ext4 /dev/vda1 rw
1209 1201 254:1 /srv/my\040dir /mnt/my\040dir ro,relatime master:1 - ext4 /dev/vda1 rw
1210 1201 254:1 /var/lib/docker/containers/c/resolv.conf /etc/resolv.conf rw,relatime - ext4 /dev/vda1 rw
1211 1201 254:1 /var/lib/docker/containers/c/hostname /etc/hostname rw,relatime - ext4 /dev/vda1 rw
1212 1201 254:1 /var/lib/docker/containers/c/hosts /etc/hosts rw,relatime - ext4 /dev/vda1 rw
1213 1203 0:94 / /dev/shm rw,nosuid,nodev,noexec,relatime - tmpfs shm rw,size=65536k
1214 1208 0:100 / /data/tmp rw,relatime - tmpfs tmpfs rw
1215 1201 0:101 / /run rw,nosuid shared:5 - tmpfs tmpfs rw
`

func TestParseMountInfo(t *testing.T) {
	ms, err := ParseMountInfo(strings.NewReader(testMountInfo))
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 15 {
		t.Fatalf("ParseMountInfo: %d mounts, want 15", len(ms))
	}
	want := MountInfo{ID: 1209, Parent: 1201, Root: "/srv/my dir", Point: "/mnt/my dir", Options: "ro,relatime", FSType: "ext4", Source: "/dev/vda1"}
	if ms[8] != want {
		t.Errorf("ParseMountInfo line 9 = %+v, want %+v", ms[8], want)
	}
	if !ms[8].ReadOnly() || ms[7].ReadOnly() {
		t.Errorf("ReadOnly: /mnt/my dir %v, /data %v; want true, false", ms[8].ReadOnly(), ms[7].ReadOnly())
	}
	if !ms[7].IsNamedVolume() || ms[8].IsNamedVolume() || ms[9].IsNamedVolume() {
		t.Errorf("IsNamedVolume: /data %v, bind %v, resolv.conf %v; want true, false, false", ms[7].IsNamedVolume(), ms[8].IsNamedVolume(), ms[9].IsNamedVolume())
	}
	var points []string
	for _, m := range containerMounts(ms) {
		points = append(points, m.Point)
	}
	wantPoints := []string{"/data", "/mnt/my dir", "/etc/resolv.conf", "/etc/hostname", "/etc/hosts", "/data/tmp", "/run"}
	if !slices.Equal(points, wantPoints) {
		t.Errorf("containerMounts = %q, want %q", points, wantPoints)
	}
	sorted := containerMounts(ms)
	byDepth(sorted)
	points = points[:0]
	for _, m := range sorted {
		points = append(points, m.Point)
	}
	wantPoints = []string{"/data", "/run", "/mnt/my dir", "/etc/resolv.conf", "/etc/hostname", "/etc/hosts", "/data/tmp"}
	if !slices.Equal(points, wantPoints) {
		t.Errorf("byDepth = %q, want %q", points, wantPoints)
	}
}

func TestParseMountInfoErrors(t *testing.T) {
	tests := []struct {
		name, line string
	}{
		{"too short", "1 2 0:1 / /"},
		{"no separator", "1 2 0:1 / / rw master:1 ext4 /dev/x rw"},
		{"nothing after separator", "1 2 0:1 / / rw - ext4"},
		{"bad id", "x 2 0:1 / / rw - ext4 /dev/x rw"},
		{"bad parent", "1 y 0:1 / / rw - ext4 /dev/x rw"},
		{"truncated escape", `1 2 0:1 / /a\04 rw - ext4 /dev/x rw`},
		{"bad escape", `1 2 0:1 / /a\999 rw - ext4 /dev/x rw`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ms, err := ParseMountInfo(strings.NewReader(tt.line + "\n"))
			if !errors.Is(err, ErrMountInfo) {
				t.Errorf("ParseMountInfo(%q) = %+v, %v; want an error wrapping ErrMountInfo", tt.line, ms, err)
			}
		})
	}
}

// The parser reads this machine's own mountinfo.
func TestParseMountInfoSelf(t *testing.T) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Skip(err)
	}
	ms, err := ParseMountInfo(strings.NewReader(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(b), "\n"); len(ms) != n {
		t.Errorf("ParseMountInfo(/proc/self/mountinfo) = %d mounts, want %d", len(ms), n)
	}
}

func FuzzParseMountInfo(f *testing.F) {
	f.Add(testMountInfo)
	for _, l := range strings.Split(testMountInfo, "\n") {
		f.Add(l)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ms, err := ParseMountInfo(strings.NewReader(s))
		if err != nil {
			if !errors.Is(err, ErrMountInfo) {
				t.Fatalf("error %v does not wrap ErrMountInfo", err)
			}
			return
		}
		for _, m := range containerMounts(ms) {
			if !strings.HasPrefix(m.Point, "/") || m.Point == "/" || under(m.Point, "/proc") || under(m.Point, "/.bootfs") {
				t.Fatalf("containerMounts kept %q", m.Point)
			}
		}
	})
}
