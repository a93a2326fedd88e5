package main

// The worker's canonical JSON (RFC 8785) against the vectors the TypeScript sidecar is held to
// (test/fixtures/nats/canonical-json.json): each input read as encoding/json reads a report's
// content, written by canonical, must be the vector's output. Run as the example's README says:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go test worker.go canonical_test.go
//
// CANONICAL_VECTORS names another vectors file.

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCanonicalVectors(t *testing.T) {
	path := os.Getenv("CANONICAL_VECTORS")
	if path == "" {
		path = filepath.Join("..", "..", "test", "fixtures", "nats", "canonical-json.json")
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		Vectors []struct {
			Name   string `json:"name"`
			Input  string `json:"input"`
			Output string `json:"output"`
		} `json:"vectors"`
	}
	if err := json.Unmarshal(raw, &file); err != nil {
		t.Fatal(err)
	}
	if len(file.Vectors) == 0 {
		t.Fatal("no vectors in " + path)
	}
	for _, v := range file.Vectors {
		var read interface{}
		if err := json.Unmarshal([]byte(v.Input), &read); err != nil {
			t.Errorf("%s: input not read: %v", v.Name, err)
			continue
		}
		var b strings.Builder
		canonical(&b, read)
		if got := b.String(); got != v.Output {
			t.Errorf("%s:\n got  %q\n want %q", v.Name, got, v.Output)
		}
	}
}
