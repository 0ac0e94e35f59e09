// kstatus-check prints the kstatus verdict (Current, InProgress, Failed, ...)
// of every Kubernetes object read as JSON from stdin, one per line:
// "<status> <message>". The e2e suite feeds it real objects from the API
// server, so Palisade's status is checked by the library Flux and
// `kubectl wait`-style tooling use, not by a reimplementation.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

func main() {
	dec := json.NewDecoder(bufio.NewReader(os.Stdin))
	for {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err == io.EOF {
			return
		} else if err != nil {
			fmt.Fprintln(os.Stderr, "decode:", err)
			os.Exit(2)
		}
		obj := &unstructured.Unstructured{}
		if err := obj.UnmarshalJSON(raw); err != nil {
			fmt.Fprintln(os.Stderr, "object:", err)
			os.Exit(2)
		}
		res, err := status.Compute(obj)
		if err != nil {
			fmt.Fprintln(os.Stderr, "compute:", err)
			os.Exit(2)
		}
		fmt.Printf("%s %s\n", res.Status, res.Message)
	}
}
