package boot

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/bootfs/bootfs/internal/inputfile"
)

// ErrUser is wrapped by errors resolving an image's User.
var ErrUser = errors.New("boot: cannot resolve user")

// User is a resolved image User: the ids and home directory the workload
// runs with.
type User struct {
	UID, GID int
	// Groups are the supplementary group ids: the primary group first,
	// then the others (as Docker's runtime sets them).
	Groups []int
	// Name is the passwd name, "" if the user has none.
	Name string
	// Home is the passwd home directory, "/" if the user has none.
	Home string
}

// maxID is the largest uid or gid (2^31-1, as the kernel's and Docker's
// runtime accept).
const maxID = 1<<31 - 1

// ResolveUser resolves an image's User spec the way Docker's runtime
// does, against the image's own /etc/passwd and /etc/group (either may be
// nil when the file does not exist):
//
//   - "" is root (uid 0, gid 0).
//   - "name" or "uid" is looked up in passwd, which gives the gid and
//     home; a uid that passwd does not list runs with gid 0. A name passwd
//     does not list is an error.
//   - "user:group" takes the group by name or gid from group; a gid it
//     does not list is used as is.
//   - Without an explicit group, the supplementary groups are the groups
//     that list the user's name as a member.
//   - The primary group is always a supplementary group too.
func ResolveUser(spec string, passwd, group io.Reader) (User, error) {
	u, err := resolveUser(spec, passwd, group)
	if err != nil {
		return User{}, err
	}
	u.Groups = mergeGroups([]int{u.GID}, u.Groups)
	return u, nil
}

func resolveUser(spec string, passwd, group io.Reader) (User, error) {
	u := User{Home: "/"}
	userArg, groupArg, _ := strings.Cut(spec, ":")
	uidArg, uidErr := parseID(userArg)
	gidArg, gidErr := parseID(groupArg)

	var entry *passwdEntry
	if passwd != nil {
		entries, err := parsePasswd(passwd)
		if err != nil {
			return User{}, err
		}
		for i := range entries {
			e := &entries[i]
			var match bool
			switch {
			case userArg == "":
				match = e.uid == 0
			case uidErr == nil:
				match = e.uid == uidArg
			default:
				match = e.name == userArg
			}
			if match {
				entry = e
				break
			}
		}
	}
	switch {
	case entry != nil:
		u.UID, u.GID, u.Home, u.Name = entry.uid, entry.gid, entry.home, entry.name
	case userArg == "":
	case uidErr == nil:
		u.UID = uidArg
	case passwd == nil:
		return User{}, fmt.Errorf("%w %q: the image has no /etc/passwd to look up %q in (use a numeric uid)", ErrUser, spec, userArg)
	default:
		return User{}, fmt.Errorf("%w %q: no user %q in the image's /etc/passwd", ErrUser, spec, userArg)
	}
	if u.Home == "" {
		u.Home = "/"
	}
	if groupArg == "" && u.Name == "" {
		return u, nil
	}

	var groups []groupEntry
	if group != nil {
		var err error
		if groups, err = parseGroup(group); err != nil {
			return User{}, err
		}
	}
	if groupArg != "" {
		for _, g := range groups {
			if (gidErr == nil && g.gid == gidArg) || (gidErr != nil && g.name == groupArg) {
				u.GID = g.gid
				return u, nil
			}
		}
		if gidErr != nil {
			return User{}, fmt.Errorf("%w %q: no group %q in the image's /etc/group", ErrUser, spec, groupArg)
		}
		u.GID = gidArg
		return u, nil
	}
	for _, g := range groups {
		for _, m := range g.members {
			if m == u.Name {
				u.Groups = append(u.Groups, g.gid)
				break
			}
		}
	}
	return u, nil
}

// parseID parses a numeric uid or gid; an empty or non-numeric s is an
// error, and so is one out of range.
func parseID(s string) (int, error) {
	if s == "" {
		return 0, errors.New("empty")
	}
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n > maxID {
		return 0, fmt.Errorf("bad id %q", s)
	}
	return int(n), nil
}

type passwdEntry struct {
	name     string
	uid, gid int
	home     string
}

type groupEntry struct {
	name    string
	gid     int
	members []string
}

// maxDBLine bounds a passwd or group line.
const maxDBLine = 64 << 10

// parsePasswd reads passwd(5) lines. Lines that are blank, comments, or
// malformed (too few fields, non-numeric ids) are skipped, as libc does.
func parsePasswd(r io.Reader) ([]passwdEntry, error) {
	var out []passwdEntry
	err := scanDB(r, "/etc/passwd", func(f []string) {
		if len(f) < 6 {
			return
		}
		uid, err1 := parseID(f[2])
		gid, err2 := parseID(f[3])
		if err1 != nil || err2 != nil {
			return
		}
		out = append(out, passwdEntry{name: f[0], uid: uid, gid: gid, home: f[5]})
	})
	return out, err
}

// parseGroup reads group(5) lines, skipping malformed ones.
func parseGroup(r io.Reader) ([]groupEntry, error) {
	var out []groupEntry
	err := scanDB(r, "/etc/group", func(f []string) {
		if len(f) < 3 {
			return
		}
		gid, err := parseID(f[2])
		if err != nil {
			return
		}
		g := groupEntry{name: f[0], gid: gid}
		if len(f) > 3 && f[3] != "" {
			for m := range strings.SplitSeq(f[3], ",") {
				if m = strings.TrimSpace(m); m != "" {
					g.members = append(g.members, m)
				}
			}
		}
		out = append(out, g)
	})
	return out, err
}

func scanDB(r io.Reader, name string, line func([]string)) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), maxDBLine)
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if l == "" || l[0] == '#' {
			continue
		}
		line(strings.Split(l, ":"))
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("%w: read the image's %s: %v", ErrUser, name, err)
	}
	return nil
}

// maxUserDB bounds the image's /etc/passwd and /etc/group that boot reads.
const maxUserDB = 64 << 20

// resolveImageUser resolves spec against the root's /etc/passwd and
// /etc/group.
func resolveImageUser(spec string) (User, error) {
	open := func(name string) (io.Reader, func()) {
		// The image's own symlinks count; a FIFO or a device there
		// must not hang or flood boot.
		f, err := inputfile.OpenFollow(name, maxUserDB)
		if err != nil {
			return nil, func() {}
		}
		return io.LimitReader(f, maxUserDB), func() { f.Close() }
	}
	passwd, closeP := open("/etc/passwd")
	defer closeP()
	group, closeG := open("/etc/group")
	defer closeG()
	return ResolveUser(spec, passwd, group)
}

// setUser switches every thread to u's groups, gid and uid.
func setUser(u User) error {
	groups := u.Groups
	if groups == nil {
		groups = []int{}
	}
	if err := syscall.Setgroups(groups); err != nil {
		return fmt.Errorf("boot: set groups %v: %w", groups, err)
	}
	if err := syscall.Setgid(u.GID); err != nil {
		return fmt.Errorf("boot: set gid %d: %w", u.GID, err)
	}
	if err := syscall.Setuid(u.UID); err != nil {
		return fmt.Errorf("boot: set uid %d: %w", u.UID, err)
	}
	return nil
}

// mergeGroups returns a followed by the members of b it lacks.
func mergeGroups(a, b []int) []int {
	out := slices.Clone(a)
	for _, g := range b {
		if !slices.Contains(out, g) {
			out = append(out, g)
		}
	}
	return out
}
