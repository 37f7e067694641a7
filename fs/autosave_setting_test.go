package fs

import (
	"errors"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestParseAutosaveRequest(t *testing.T) {
	good := []struct {
		request string
		want    autosaveSetting
	}{
		{"30s", autosaveSetting{30 * time.Second, 10}},
		{"30s keep=10", autosaveSetting{30 * time.Second, 10}},
		{"1s keep=1", autosaveSetting{time.Second, 1}},
		{"1m30s keep=3", autosaveSetting{90 * time.Second, 3}},
		{"1.5s", autosaveSetting{1500 * time.Millisecond, 10}},
		{"  2h\tkeep=100 ", autosaveSetting{2 * time.Hour, 100}},
		{"1000ms keep=2", autosaveSetting{time.Second, 2}},
	}
	for _, tc := range good {
		got, off, err := parseAutosaveRequest(tc.request)
		if err != nil || off || got != tc.want {
			t.Errorf("parseAutosaveRequest(%q) = %v, off %t, %v; want %v", tc.request, got, off, err, tc.want)
		}
	}

	if _, off, err := parseAutosaveRequest("off"); err != nil || !off {
		t.Errorf(`parseAutosaveRequest("off") = off %t, %v; want off`, off, err)
	}

	bad := []struct {
		request string
		reason  string
	}{
		{"", "empty"},
		{"0.5s", "shorter than the minimum of 1s"},
		{"999ms keep=3", "shorter than the minimum"},
		{"-5s", "shorter than the minimum"},
		{"abc", "not a Go duration"},
		{"30", "not a Go duration"},
		{"1s keep=0", "at least 1"},
		{"1s keep=x", "not a decimal number"},
		{"1s keep=-1", "not a decimal number"},
		{"1s keep=", "not a decimal number"},
		{"1s keep=99999999999", "not a decimal number"},
		{"1s keep=3 keep=4", "too many fields"},
		{"1s 3", "unknown option"},
		{"1s count=3", "unknown option"},
		{"off now", "off takes no arguments"},
		{"OFF", "not a Go duration"},
	}
	for _, tc := range bad {
		_, _, err := parseAutosaveRequest(tc.request)
		if !errors.Is(err, unix.EINVAL) {
			t.Errorf("parseAutosaveRequest(%q) error %v, want EINVAL", tc.request, err)
			continue
		}
		if !strings.Contains(err.Error(), tc.reason) {
			t.Errorf("parseAutosaveRequest(%q) error %q does not say %q", tc.request, err, tc.reason)
		}
	}
}

func TestAutosaveRecordRoundTrip(t *testing.T) {
	setting := autosaveSetting{Interval: 90 * time.Second, Keep: 4}
	setter := taskCreds{UID: [3]uint32{1000, 1000, 1000}, GID: [3]uint32{100, 100, 100}, CapPrm: 0x20, CapEff: 0x20}
	data, err := encodeAutosaveRecord(setting, setter)
	if err != nil {
		t.Fatal(err)
	}

	gotSetting, gotSetter, err := decodeAutosaveRecord(data)
	if err != nil {
		t.Fatalf("decodeAutosaveRecord(%s): %v", data, err)
	}
	if gotSetting != setting {
		t.Errorf("setting %v, want %v", gotSetting, setting)
	}
	if gotSetter != setter {
		t.Errorf("setter %+v, want %+v", gotSetter, setter)
	}

	for _, damaged := range []string{"", "{", `{"setting":"off"}`, `{"setting":"0s"}`} {
		if _, _, err := decodeAutosaveRecord([]byte(damaged)); !errors.Is(err, unix.EINVAL) {
			t.Errorf("decodeAutosaveRecord(%q) error %v, want EINVAL", damaged, err)
		}
	}
}

func TestScheduleAdvance(t *testing.T) {
	start := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	sc := &schedule{setting: autosaveSetting{Interval: 10 * time.Second, Keep: 1}, next: start}

	if got := sc.advance(start.Add(time.Second)); !got.Equal(start.Add(10 * time.Second)) {
		t.Errorf("advance after a quick tick = %v, want one interval on", got)
	}
	// A tick that took 25 s skips the ticks it missed and keeps the phase.
	if got := sc.advance(start.Add(35 * time.Second)); !got.Equal(start.Add(40 * time.Second)) {
		t.Errorf("advance after a slow tick = %v, want %v", got, start.Add(40*time.Second))
	}
	if got := sc.advance(start.Add(50 * time.Second)); !got.Equal(start.Add(60 * time.Second)) {
		t.Errorf("advance exactly at a due time = %v, want %v", got, start.Add(60*time.Second))
	}
}

func FuzzParseAutosaveRequest(f *testing.F) {
	for _, seed := range []string{"30s keep=10", "off", "1s", "0.5s", "abc", "1s keep=0", "1s keep=x", "1h2m3s4ms keep=7\n", ""} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, request string) {
		setting, off, err := parseAutosaveRequest(request)
		if err != nil {
			if !errors.Is(err, unix.EINVAL) {
				t.Fatalf("parseAutosaveRequest(%q) error %v does not wrap EINVAL", request, err)
			}
			return
		}
		if off {
			return
		}
		if setting.Interval < minAutosaveInterval || setting.Keep < 1 {
			t.Fatalf("parseAutosaveRequest(%q) accepted %v", request, setting)
		}

		again, off, err := parseAutosaveRequest(setting.String())
		if err != nil || off || again != setting {
			t.Fatalf("%q parsed to %v, whose text %q parses to %v, off %t, %v", request, setting, setting.String(), again, off, err)
		}
	})
}
