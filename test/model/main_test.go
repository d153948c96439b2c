package model

import (
	"os"
	"testing"

	"github.com/keelfs/keelfs/test/harness"
)

// TestMain runs the package under harness.Main, as the other packages that
// mount do: the timeout watch detaches what a hung step left mounted, in a
// temporary directory of the package's own, and the run fails if any mount
// is left at the end.
func TestMain(m *testing.M) { os.Exit(harness.Main(m)) }
