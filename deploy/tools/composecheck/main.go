// composecheck validates a Compose file the way Docker Compose v2 loads it,
// without a Docker engine: it uses compose-go, the loader Docker Compose itself
// is built on. The file is checked against the Compose Specification JSON
// schema, interpolated, normalized, decoded into compose-go's typed model and
// checked for consistency (depends_on targets, named volumes and networks,
// env_files, ...). Any warning compose-go logs is an error here.
//
// Usage: composecheck [-env NAME=VALUE ...] COMPOSE_FILE
//
// Only the -env values (never the caller's environment) are used for
// interpolation, so the result does not depend on who runs it. On success it
// prints the resolved project as JSON on stdout (paths made absolute) and
// exits 0; otherwise it prints the problems on stderr and exits 1.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/sirupsen/logrus"
)

type envFlags []string

func (e *envFlags) String() string { return strings.Join(*e, ",") }

func (e *envFlags) Set(value string) error {
	if !strings.Contains(value, "=") {
		return fmt.Errorf("%q is not NAME=VALUE", value)
	}
	*e = append(*e, value)
	return nil
}

func main() {
	var env envFlags
	flag.Var(&env, "env", "NAME=VALUE used for interpolation (repeatable)")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: composecheck [-env NAME=VALUE ...] COMPOSE_FILE")
		os.Exit(2)
	}
	file, err := filepath.Abs(flag.Arg(0))
	if err != nil {
		fail(err)
	}

	var warnings bytes.Buffer
	logrus.SetOutput(&warnings)
	logrus.SetFormatter(&logrus.TextFormatter{DisableTimestamp: true})
	logrus.SetLevel(logrus.WarnLevel)

	options, err := cli.NewProjectOptions([]string{file},
		cli.WithWorkingDirectory(filepath.Dir(file)),
		cli.WithEnv(env),
		cli.WithInterpolation(true),
		cli.WithNormalization(true),
		cli.WithConsistency(true),
		cli.WithResolvedPaths(true),
	)
	if err != nil {
		fail(err)
	}
	project, err := options.LoadProject(context.Background())
	if err != nil {
		fail(err)
	}
	if warnings.Len() > 0 {
		fmt.Fprintf(os.Stderr, "compose-go warnings (treated as errors):\n%s", warnings.String())
		os.Exit(1)
	}
	out, err := project.MarshalJSON()
	if err != nil {
		fail(err)
	}
	fmt.Println(string(out))
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "invalid compose file: %v\n", err)
	os.Exit(1)
}
