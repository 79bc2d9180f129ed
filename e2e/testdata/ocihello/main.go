// Command ocihello is the program of the e2e suite's container image: a
// static binary that reports what it was started with (arguments, working
// directory, an environment variable, its uid), and can write and read a
// file, so the test sees the image's config applied inside a VM.
package main

import (
	"fmt"
	"os"
	"strings"
)

func main() {
	args := os.Args[1:]
	if len(args) == 2 && args[0] == "cat" {
		b, err := os.ReadFile(args[1])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Stdout.Write(b)
		return
	}
	wd, _ := os.Getwd()
	fmt.Printf("args=[%s] cwd=%s greeting=%s uid=%d\n", strings.Join(args, " "), wd, os.Getenv("GREETING"), os.Getuid())
}
