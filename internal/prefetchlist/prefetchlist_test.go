package prefetchlist

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
)

// TestRoundTrip: paths with blanks, tabs, '#', quotes, backslashes,
// newlines and bytes that are not UTF-8, whole or with ranges, come back
// as they were written.
func TestRoundTrip(t *testing.T) {
	odd := []string{
		"/usr/bin/plain",
		"/with space/and\ttab",
		"/#hash",
		`/"quoted"`,
		`/back\slash`,
		"/new\nline\r",
		"/latin1-\xe9\xff",
		"/ ends in a blank ",
		"/unicodé",
	}
	var list []Entry
	for k, p := range odd {
		list = append(list, Entry{Path: p})
		list = append(list, Entry{Path: p, Ranges: []Range{{Off: uint64(k), Len: 1}, {Off: 1 << 40, Len: 65536}}})
	}
	b := Marshal(list)
	if !bytes.HasPrefix(b, []byte(Header+"\n")) {
		t.Errorf("Marshal does not start with the header: %q", b)
	}
	if n := bytes.Count(b, []byte("\n")); n != len(list)+1 {
		t.Errorf("Marshal wrote %d lines, want %d", n, len(list)+1)
	}
	got, err := Parse(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, list) {
		t.Errorf("Parse(Marshal(list)) =\n%+v\nwant\n%+v\nfrom\n%s", got, list, b)
	}
}

// TestParseOldFormat: lists of the first format, one path a line, read as
// whole files, and so do quoted paths without ranges.
func TestParseOldFormat(t *testing.T) {
	in := "# recorded by boot\n/bin/sh\n\n/with space\t#not a comment\r\n  \n\"/odd\\nname\"\n\"/quoted alone\"  \n/last"
	want := []Entry{{Path: "/bin/sh"}, {Path: "/with space\t#not a comment"}, {Path: "/odd\nname"}, {Path: "/quoted alone"}, {Path: "/last"}}
	got, err := Parse(strings.NewReader(in))
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("Parse = %+v, %v; want %+v", got, err, want)
	}
}

// TestParseRanges: ranges are sorted and merged where they overlap or
// touch, blanks and tabs both separate them.
func TestParseRanges(t *testing.T) {
	got, err := Parse(strings.NewReader("\"/a\" 100+10\t0+50 40+20  105+1 200+1\n"))
	want := []Entry{{Path: "/a", Ranges: []Range{{Off: 0, Len: 60}, {Off: 100, Len: 10}, {Off: 200, Len: 1}}}}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("Parse = %+v, %v; want %+v", got, err, want)
	}
}

// TestParseErrors: each bad line fails with its number, what is wrong and
// what to write.
func TestParseErrors(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"/a\nrelative\n", `line 2: "relative" is not an absolute path (write one absolute image path a line`},
		{"\"/a\n", "line 1: bad quoted path \"/a (write it Go-quoted"},
		{"\"relative\" 0+1\n", `line 1: "relative" is not an absolute path`},
		{"\"/a\"0+1\n", `line 1: "0+1" follows the quoted path "/a" (put a blank between`},
		{"\"/a\" 0-10\n", `line 1: range "0-10" of "/a": no '+' (want OFFSET+LENGTH in decimal bytes, such as 0+65536)`},
		{"\"/a\" x+10\n", `range "x+10" of "/a": bad offset`},
		{"\"/a\" 0+-1\n", `range "0+-1" of "/a": bad length`},
		{"\"/a\" 5+0\n", `range "5+0" of "/a": empty range`},
		{"\"/a\" 18446744073709551615+2\n", "ends past 2^64"},
		{"# c\n\n\"/a\" 0+1 #comment\n", `line 3: range "#comment"`},
	} {
		if _, err := Parse(strings.NewReader(tc.in)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%q) = %v, want an error with %q", tc.in, err, tc.want)
		}
	}
}

func TestNormalize(t *testing.T) {
	got := Normalize([]Range{{Off: 10, Len: 5}, {Off: 0, Len: 10}, {Off: 30, Len: 1}, {Off: 12, Len: 1}})
	want := []Range{{Off: 0, Len: 15}, {Off: 30, Len: 1}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Normalize = %+v, want %+v", got, want)
	}
}
