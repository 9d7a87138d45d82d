package boot

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

const (
	testPasswd = `root:x:0:0:root:/root:/bin/sh
# a comment

daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
broken line
bad:x:notanumber:1::/:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
alice:x:1000:1000::/home/alice:/bin/sh
nohome:x:1001:1001:::/bin/sh
`
	testGroup = `root:x:0:
wheel:x:10:root, alice
audio:x:29:alice
nogroup:x:65534:
alice:x:1000:
staff:x:50:
`
)

func TestResolveUser(t *testing.T) {
	tests := []struct {
		name   string
		spec   string
		noDB   bool
		want   User
		errSub string
	}{
		{name: "empty is root", spec: "", want: User{UID: 0, GID: 0, Groups: []int{0, 10}, Name: "root", Home: "/root"}},
		{name: "root by name", spec: "root", want: User{UID: 0, GID: 0, Groups: []int{0, 10}, Name: "root", Home: "/root"}},
		{name: "name", spec: "alice", want: User{UID: 1000, GID: 1000, Groups: []int{1000, 10, 29}, Name: "alice", Home: "/home/alice"}},
		{name: "uid in passwd", spec: "1000", want: User{UID: 1000, GID: 1000, Groups: []int{1000, 10, 29}, Name: "alice", Home: "/home/alice"}},
		{name: "nobody", spec: "nobody", want: User{UID: 65534, GID: 65534, Groups: []int{65534}, Name: "nobody", Home: "/nonexistent"}},
		{name: "uid not in passwd", spec: "4242", want: User{UID: 4242, GID: 0, Groups: []int{0}, Home: "/"}},
		{name: "user and group names", spec: "alice:staff", want: User{UID: 1000, GID: 50, Groups: []int{50}, Name: "alice", Home: "/home/alice"}},
		{name: "user and gid", spec: "1000:10", want: User{UID: 1000, GID: 10, Groups: []int{10}, Name: "alice", Home: "/home/alice"}},
		{name: "both numeric unknown", spec: "4242:4343", want: User{UID: 4242, GID: 4343, Groups: []int{4343}, Home: "/"}},
		{name: "root with group", spec: "root:wheel", want: User{UID: 0, GID: 10, Groups: []int{10}, Name: "root", Home: "/root"}},
		{name: "empty home is /", spec: "nohome", want: User{UID: 1001, GID: 1001, Groups: []int{1001}, Name: "nohome", Home: "/"}},
		{name: "no files, numeric", spec: "7:8", noDB: true, want: User{UID: 7, GID: 8, Groups: []int{8}, Home: "/"}},
		{name: "no files, root", spec: "", noDB: true, want: User{Groups: []int{0}, Home: "/"}},
		{name: "unknown name", spec: "mallory", errSub: `no user "mallory"`},
		{name: "unknown group name", spec: "alice:nope", errSub: `no group "nope"`},
		{name: "no files, name", spec: "alice", noDB: true, errSub: "no /etc/passwd"},
		{name: "uid out of range", spec: "4294967296", errSub: "no user"},
		{name: "malformed line skipped", spec: "bad", errSub: `no user "bad"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got User
			var err error
			if tt.noDB {
				got, err = ResolveUser(tt.spec, nil, nil)
			} else {
				got, err = ResolveUser(tt.spec, strings.NewReader(testPasswd), strings.NewReader(testGroup))
			}
			if tt.errSub != "" {
				if err == nil || !errors.Is(err, ErrUser) || !strings.Contains(err.Error(), tt.errSub) {
					t.Fatalf("ResolveUser(%q) = %+v, %v; want an error wrapping ErrUser containing %q", tt.spec, got, err, tt.errSub)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ResolveUser(%q) = %+v, %v; want %+v", tt.spec, got, err, tt.want)
			}
		})
	}
}

func FuzzResolveUser(f *testing.F) {
	f.Add("alice", testPasswd, testGroup)
	f.Add("1000:10", testPasswd, testGroup)
	f.Add(":", "::::::", ":::")
	f.Fuzz(func(t *testing.T, spec, passwd, group string) {
		u, err := ResolveUser(spec, strings.NewReader(passwd), strings.NewReader(group))
		if err != nil {
			if !errors.Is(err, ErrUser) {
				t.Fatalf("ResolveUser(%q) error %v does not wrap ErrUser", spec, err)
			}
			return
		}
		if u.UID < 0 || u.GID < 0 || u.UID > maxID || u.GID > maxID || len(u.Groups) == 0 || u.Groups[0] != u.GID || u.Home == "" {
			t.Fatalf("ResolveUser(%q) = %+v: out of range or no primary group", spec, u)
		}
	})
}
