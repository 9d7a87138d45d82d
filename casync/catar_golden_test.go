package casync

import (
	"encoding/binary"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/bootfs/bootfs/internal/testenv"
)

var updateCatarFixtures = flag.Bool("update-catar-fixtures", false, "rewrite testdata/catar with the real casync")

// posixACL encodes a system.posix_acl_* xattr value: version 2, then
// (tag, perm, id) entries.
func posixACL(entries ...[3]uint32) string {
	b := binary.LittleEndian.AppendUint32(nil, 2)
	for _, e := range entries {
		b = binary.LittleEndian.AppendUint16(b, uint16(e[0]))
		b = binary.LittleEndian.AppendUint16(b, uint16(e[1]))
		b = binary.LittleEndian.AppendUint32(b, e[2])
	}
	return string(b)
}

// defaultFeaturesTree exercises what casync's default feature set adds:
// user and group names (uid 1 is "daemon" on Debian), ACLs and chattr
// flags.
func defaultFeaturesTree() []tnode {
	const none = 0xffffffff
	acl := posixACL([3]uint32{0x01, 6, none}, [3]uint32{0x02, 4, 1}, [3]uint32{0x04, 4, none}, [3]uint32{0x10, 4, none}, [3]uint32{0x20, 4, none})
	return []tnode{
		tdir(".", withMTime(time.Unix(1600000000, 0))),
		tfile("owned", []byte("owned by daemon"), withOwner(1, 1), withXattr("user.k", "v")),
		tfile("acl", []byte("with an ACL"), withXattr("system.posix_acl_access", acl)),
		tdir("dacl", withXattr("system.posix_acl_default", acl)),
		tfile("dacl/f", []byte("f")),
		tfile("noatime", []byte("chattr +A")),
		tsymlink("link", "owned", withOwner(1, 1)),
		tfifo("fifo"),
		tchardev("zero", 1, 5),
	}
}

// smallOwners gives owners above 65535 to root, for 16-bit uid archives.
func smallOwners(nodes []tnode) []tnode {
	out := append([]tnode(nil), nodes...)
	for i := range out {
		if out[i].uid > 0xfffe || out[i].gid > 0xfffe {
			out[i].uid, out[i].gid = 0, 0
		}
	}
	return out
}

// TestMakeCatarFixtures rewrites the golden archives in testdata/catar
// with the real casync, when run with -update-catar-fixtures. The commands
// are recorded in testdata/README.md.
func TestMakeCatarFixtures(t *testing.T) {
	if !*updateCatarFixtures {
		t.Skip("run with -update-catar-fixtures to rewrite testdata/catar")
	}
	testenv.LookPath(t, "casync")
	out, err := filepath.Abs("testdata/catar")
	requireOK(t, "abs", err)
	requireOK(t, "mkdir", os.MkdirAll(out, 0o755))
	for _, tc := range []struct {
		name  string
		nodes []tnode
		args  []string
		setup func(root string) error
	}{
		{name: "tricky", nodes: withSocket(trickyTree(false)), args: CasyncMakeArgs},
		{name: "default", nodes: defaultFeaturesTree(), setup: func(root string) error {
			return exec.Command("chattr", "+A", filepath.Join(root, "noatime")).Run()
		}},
		{name: "unix", nodes: smallOwners(withSocket(trickyTree(false))), args: []string{"--with=unix"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := makeCatarTree(t, tc.nodes)
			if tc.setup != nil {
				requireOK(t, "setup", tc.setup(root))
			}
			archive := filepath.Join(out, tc.name+".catar")
			args := append(append([]string{"make"}, tc.args...), archive, ".")
			cmd := exec.Command("casync", args...)
			cmd.Dir = root
			if b, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("casync %q: %v\n%s", args, err, b)
			}
			mtree := runCasync(t, "mtree", archive)
			requireOK(t, "write mtree", os.WriteFile(filepath.Join(out, tc.name+".mtree"), mtree, 0o644))
			t.Logf("(cd ROOT && casync %q) && casync mtree %s.catar > %s.mtree", args, tc.name, tc.name)
		})
	}
}
