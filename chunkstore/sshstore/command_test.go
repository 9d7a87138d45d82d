package sshstore

import (
	"errors"
	"reflect"
	"testing"
)

func TestSplitCommand(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    []string
		wantErr bool
	}{
		{name: "casync", in: "casync pull - - - /srv/store", want: []string{"casync", "pull", "-", "-", "-", "/srv/store"}},
		{name: "desync quoted", in: "casync pull - - - '/srv/my store'", want: []string{"casync", "pull", "-", "-", "-", "/srv/my store"}},
		{name: "quote in single quotes", in: `a 'it'\''s'`, want: []string{"a", "it's"}},
		{name: "double quotes", in: `a "b \"c\" \\ \d"`, want: []string{"a", `b "c" \ \d`}},
		{name: "backslash", in: `a\ b c`, want: []string{"a b", "c"}},
		{name: "empty quoted word", in: `a ''`, want: []string{"a", ""}},
		{name: "blanks", in: "  a \t b  ", want: []string{"a", "b"}},
		{name: "empty", in: "", want: nil},
		{name: "semicolon", in: "casync pull - - - /x; rm -rf /", wantErr: true},
		{name: "pipe", in: "a | b", wantErr: true},
		{name: "substitution", in: "a $(b)", wantErr: true},
		{name: "backquote", in: "a `b`", wantErr: true},
		{name: "expansion in double quotes", in: `a "$HOME"`, wantErr: true},
		{name: "newline", in: "a\nb", wantErr: true},
		{name: "unterminated single", in: "a 'b", wantErr: true},
		{name: "unterminated double", in: `a "b`, wantErr: true},
		{name: "trailing backslash", in: `a \`, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := splitCommand(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("splitCommand(%q) = %q, %v, want error %v", tt.in, got, err, tt.wantErr)
			}
			if err != nil {
				if !errors.Is(err, errCommand) {
					t.Errorf("splitCommand(%q) error %v does not wrap errCommand", tt.in, err)
				}
				return
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("splitCommand(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestParseCommand(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    remoteCommand
		wantErr bool
	}{
		{name: "casync", in: "casync pull - - - /srv/store", want: remoteCommand{verb: "pull", stores: []string{"/srv/store"}}},
		{name: "desync", in: "casync pull - - - '/srv/store'", want: remoteCommand{verb: "pull", stores: []string{"/srv/store"}}},
		{name: "casync options", in: "casync --log-level=7 --rate-limit-bps=1000 pull - - - /s", want: remoteCommand{verb: "pull", stores: []string{"/s"}}},
		{name: "remote path", in: "/usr/local/bin/casync pull - - - /s", want: remoteCommand{verb: "pull", stores: []string{"/s"}}},
		{name: "read stores", in: "casync pull - - - - /a /b", want: remoteCommand{verb: "pull", stores: []string{"/a", "/b"}}},
		{name: "write and read store", in: "casync pull - - - /a /b", want: remoteCommand{verb: "pull", stores: []string{"/a", "/b"}}},
		{name: "push chunks", in: "casync push - - - /s", want: remoteCommand{verb: "push", stores: []string{"/s"}}},
		{name: "push index and chunks", in: "casync push - - /srv/x.caidx /s", want: remoteCommand{verb: "push", index: "/srv/x.caidx", stores: []string{"/s"}}},
		{name: "push with options", in: "casync --log-level=3 push - - x.caidx '/s'", want: remoteCommand{verb: "push", index: "x.caidx", stores: []string{"/s"}}},
		{name: "push no write store", in: "casync push - - /srv/x.caidx - /s", wantErr: true},
		{name: "push archive", in: "casync push - /srv/x.catar - /s", wantErr: true},
		{name: "push base", in: "casync push /srv/base - - /s", wantErr: true},
		{name: "push nothing", in: "casync push - - - -", wantErr: true},
		{name: "other program", in: "ls /", wantErr: true},
		{name: "casync lookalike", in: "casync2 pull - - - /s", wantErr: true},
		{name: "other verb", in: "casync extract x.caidx /", wantErr: true},
		{name: "unknown option", in: "casync --store=/x pull - - - /s", wantErr: true},
		{name: "index", in: "casync pull - - /srv/x.caidx /s", wantErr: true},
		{name: "archive", in: "casync pull - /srv/x.catar - -", wantErr: true},
		{name: "base", in: "casync pull /srv/base - - /s", wantErr: true},
		{name: "no store", in: "casync pull - - - -", wantErr: true},
		{name: "too few", in: "casync pull - - -", wantErr: true},
		{name: "no verb", in: "casync --log-level=1", wantErr: true},
		{name: "empty", in: "", wantErr: true},
		{name: "injection", in: "casync pull - - - /s && reboot", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseCommand(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("parseCommand(%q) = %+v, %v, want error %v", tt.in, got, err, tt.wantErr)
			}
			if err != nil {
				if !errors.Is(err, errCommand) {
					t.Errorf("parseCommand(%q) error %v does not wrap errCommand", tt.in, err)
				}
				return
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("parseCommand(%q) = %+v, want %+v", tt.in, got, tt.want)
			}
		})
	}
}

func TestShellQuote(t *testing.T) {
	for _, s := range []string{"/srv/store", "", "a b", "it's", `"$x"`, "a\nb", "/x;y"} {
		t.Run(s, func(t *testing.T) {
			got, err := splitCommand("casync " + shellQuote(s))
			if err != nil || len(got) != 2 || got[1] != s {
				t.Errorf("splitCommand(casync %s) = %q, %v, want [casync %q]", shellQuote(s), got, err, s)
			}
		})
	}
}

// FuzzSplitCommand checks that splitCommand never panics and that a
// shell-quoted word always comes back whole.
func FuzzSplitCommand(f *testing.F) {
	f.Add("casync pull - - - '/srv/store'")
	f.Add(`a "b\"c" d\ e`)
	f.Add("it's")
	f.Fuzz(func(t *testing.T, s string) {
		splitCommand(s)
		got, err := splitCommand("x " + shellQuote(s))
		if err != nil || len(got) != 2 || got[1] != s {
			t.Fatalf("splitCommand(x %s) = %q, %v, want [x %q]", shellQuote(s), got, err, s)
		}
	})
}
