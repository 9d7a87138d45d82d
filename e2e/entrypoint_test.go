package e2e

import (
	"strings"
	"testing"
)

// TestEntrypointOverride checks the README's recipe for replacing the
// original entrypoint: --entrypoint /.bootfs/boot IMAGE -- CMD runs CMD in
// the image's root, while another --entrypoint bypasses boot and finds no
// image root at all.
func TestEntrypointOverride(t *testing.T) {
	e := setup(t)
	want := e.run(t, false, []string{"--entrypoint", "/bin/cat"}, e.bb, "/etc/os-release")
	got := e.run(t, true, []string{"--entrypoint", "/.bootfs/boot"}, e.bbBoot, "--", "/bin/cat", "/etc/os-release")
	if got.code != 0 || got.stdout != want.stdout || want.code != 0 {
		t.Errorf("--entrypoint /.bootfs/boot -- cat: exit %d, %q; want exit 0, %q (original exit %d)\nstderr: %s",
			got.code, got.stdout, want.stdout, want.code, got.stderr)
	}
	bypass := e.run(t, true, []string{"--entrypoint", "/bin/cat"}, e.bbBoot, "/etc/os-release")
	if bypass.code == 0 || !strings.Contains(bypass.stderr, "no such file") {
		t.Errorf("--entrypoint /bin/cat on the boot image: exit %d, stderr %q; want Docker's no such file error", bypass.code, bypass.stderr)
	}
}
