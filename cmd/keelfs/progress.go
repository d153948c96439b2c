package main

import (
	"fmt"
	"os"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// progress shows a bar on a terminal and a plain line every few seconds
// otherwise (logs, CI). The bar comes from schollz/progressbar: it handles
// terminal width, rates and ETA properly, which is not worth redoing.
type progress struct {
	what      string
	tty       bool
	bar       *progressbar.ProgressBar
	lastPrint time.Time
	total     int64
	doneBytes int64
	maxDirty  int64
}

func newProgress(what string) *progress {
	return &progress{what: what, tty: term.IsTerminal(int(os.Stderr.Fd()))}
}

func (p *progress) start(total int64) {
	p.total = total
	if p.tty {
		p.bar = progressbar.DefaultBytes(total, p.what)
	}
}

func (p *progress) add(n int64) {
	p.doneBytes += n
	if p.bar != nil {
		p.bar.Add64(n)
		return
	}
	if time.Since(p.lastPrint) > 2*time.Second {
		p.lastPrint = time.Now()
		fmt.Fprintf(os.Stderr, "%s: %s of %s\n", p.what, humanBytes(p.doneBytes), humanBytes(p.total))
	}
}

// pending shows what a flush still waits for.
func (p *progress) pending(files, deletes int, dirty int64) {
	if dirty > p.maxDirty {
		p.maxDirty = dirty
	}
	if p.tty {
		if p.bar == nil {
			p.bar = progressbar.DefaultBytes(max(p.maxDirty, 1), p.what)
		}
		p.bar.ChangeMax64(max(p.maxDirty, 1))
		p.bar.Set64(p.maxDirty - dirty)
		p.bar.Describe(fmt.Sprintf("%s: %d files, %d deletes left", p.what, files, deletes))
		return
	}
	if time.Since(p.lastPrint) > 2*time.Second {
		p.lastPrint = time.Now()
		fmt.Fprintf(os.Stderr, "%s: %d files (%s) and %d deletes left\n", p.what, files, humanBytes(dirty), deletes)
	}
}

func (p *progress) done(msg string) {
	if p.bar != nil {
		p.bar.Finish()
		fmt.Fprintln(os.Stderr)
	}
	if msg != "" {
		fmt.Fprintf(os.Stderr, "%s: %s\n", p.what, msg)
	}
}
