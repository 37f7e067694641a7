package snapshot

import (
	"errors"
	"regexp"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestValidName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"snap-1", true},
		{"a", true},
		{"Z9", true},
		{"before.upgrade_2-b", true},
		{"auto-3", true},
		{strings.Repeat("x", 64), true},
		{"", false},
		{strings.Repeat("x", 65), false},
		{".hidden", false},
		{"..", false},
		{"-flag", false},
		{"_x", false},
		{"a/b", false},
		{"a b", false},
		{"a\n", false},
		{"tab\there", false},
		{"caf\u00e9", false},
		{"nul\x00", false},
		{"capture", false},
		{"restore", false},
		{"status", false},
		{"autosave", false},
		{"latest", false},
		{"self", false},
		{"Latest", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidName(tt.name)
			if tt.ok && err != nil {
				t.Errorf("ValidName(%q) = %v, want nil", tt.name, err)
			}
			if !tt.ok && !errors.Is(err, unix.EINVAL) {
				t.Errorf("ValidName(%q) = %v, want EINVAL", tt.name, err)
			}
		})
	}
}

func TestAutoNumber(t *testing.T) {
	tests := []struct {
		name string
		n    uint64
		ok   bool
	}{
		{"snap-1", 1, true},
		{"snap-42", 42, true},
		{"snap-0", 0, false},
		{"snap-01", 0, false},
		{"snap-", 0, false},
		{"snap-1a", 0, false},
		{"snap-+1", 0, false},
		{"snap-99999999999999999999", 0, false},
		{"auto-1", 0, false},
	}
	for _, tt := range tests {
		n, ok := autoNumber(tt.name)
		if n != tt.n || ok != tt.ok {
			t.Errorf("autoNumber(%q) = %d, %v, want %d, %v", tt.name, n, ok, tt.n, tt.ok)
		}
	}
}

var namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

func FuzzValidName(f *testing.F) {
	for _, seed := range []string{"snap-1", "", "latest", ".x", strings.Repeat("a", 64), "a\x00b"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, name string) {
		err := ValidName(name)
		want := namePattern.MatchString(name) && !slices.Contains(controlNames, name)
		if want != (err == nil) {
			t.Fatalf("ValidName(%q) = %v, the pattern says valid=%v", name, err, want)
		}
		if err != nil && !errors.Is(err, unix.EINVAL) {
			t.Fatalf("ValidName(%q) = %v, want an error wrapping EINVAL", name, err)
		}
	})
}
