package main

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// readFile reads path to the end with 1 MiB reads and checks it got want
// bytes.
func readFile(ctx context.Context, p string, want int64) (time.Duration, error) {
	start := time.Now()
	f, err := os.Open(p)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	var n int64
	for {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		m, err := f.Read(buf)
		n += int64(m)
		if err == io.EOF {
			break
		}
		if err != nil {
			return 0, err
		}
	}
	if n != want {
		return 0, fmt.Errorf("read %d bytes of %d", n, want)
	}
	return time.Since(start), nil
}

// writeFile writes size bytes of pattern (repeated) to a new file p in
// 1 MiB writes, like dd bs=1M, and closes it. Random bytes, so nothing can
// shortcut zeros.
func writeFile(ctx context.Context, p string, size int64, pattern []byte) error {
	f, err := os.OpenFile(p, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	const chunk = 1 << 20
	for off := int64(0); off < size; off += chunk {
		if err := ctx.Err(); err != nil {
			f.Close()
			return err
		}
		n := min(chunk, size-off)
		start := off % int64(len(pattern))
		if _, err := f.Write(pattern[start : start+n]); err != nil {
			f.Close()
			return err
		}
	}
	return f.Close()
}

// lsLong runs `ls -l dir` and checks it listed want entries.
func lsLong(ctx context.Context, dir string, want int) (time.Duration, error) {
	var out, stderr bytes.Buffer
	cmd := command(ctx, "ls", "-l", dir)
	cmd.Stdout, cmd.Stderr = &out, &stderr
	start := time.Now()
	err := cmd.Run()
	d := time.Since(start)
	if err != nil {
		return 0, fmt.Errorf("ls -l: %v: %s", err, tail(stderr.String(), 500))
	}
	if got := bytes.Count(out.Bytes(), []byte("\n")) - 1; got != want { // first line is "total N"
		return 0, fmt.Errorf("ls -l listed %d entries, want %d", got, want)
	}
	return d, nil
}

// lsNames runs `ls -f dir`, which lists names only (unsorted, no stat of
// each entry), and checks it listed want entries besides . and ..
func lsNames(ctx context.Context, dir string, want int) (time.Duration, error) {
	var out, stderr bytes.Buffer
	cmd := command(ctx, "ls", "-f", dir)
	cmd.Stdout, cmd.Stderr = &out, &stderr
	start := time.Now()
	err := cmd.Run()
	d := time.Since(start)
	if err != nil {
		return 0, fmt.Errorf("ls -f: %v: %s", err, tail(stderr.String(), 500))
	}
	if got := bytes.Count(out.Bytes(), []byte("\n")) - 2; got != want {
		return 0, fmt.Errorf("ls -f listed %d entries besides . and .., want %d", got, want)
	}
	return d, nil
}

// untar extracts the tar into dir as a user would (no chown).
func untar(ctx context.Context, tarPath, dir string) error {
	cmd := command(ctx, "tar", "-x", "--no-same-owner", "-f", tarPath, "-C", dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("tar x: %v: %s", err, tail(string(out), 1000))
	}
	return nil
}

// appendLine is the i-th line of the log: always 64 bytes.
func appendLine(i int) string {
	return fmt.Sprintf("%06d %s\n", i, strings.Repeat("x", 56))
}

// appendLines does n cycles of open(O_APPEND), write one line, close.
func appendLines(ctx context.Context, p string, n int) error {
	for i := 0; i < n; i++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		f, err := os.OpenFile(p, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			return err
		}
		if _, err := f.WriteString(appendLine(i)); err != nil {
			f.Close()
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
	}
	return nil
}

// fioRandRead runs fio's 4 KiB random reads on p (buffered, one thread)
// and returns the read IOPS. With keepCache, fio leaves the file's page
// cache as it is (--invalidate=0); by default it drops it before the job.
func fioRandRead(ctx context.Context, p string, size int64, runtime time.Duration, keepCache bool) (float64, error) {
	invalidate := "--invalidate=1"
	if keepCache {
		invalidate = "--invalidate=0"
	}
	cmd := command(ctx, "fio", "--name=r", "--filename="+p, "--rw=randread", "--bs=4k",
		fmt.Sprintf("--runtime=%d", int(runtime.Seconds())), "--time_based", "--ioengine=psync", "--direct=0",
		invalidate, "--size="+strconv.FormatInt(size, 10), "--readonly", "--output-format=json")
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		return 0, fmt.Errorf("fio: %v: %s", err, tail(stderr.String()+out.String(), 1000))
	}
	js := out.Bytes()
	if i := bytes.IndexByte(js, '{'); i > 0 {
		js = js[i:] // fio may print notes before the JSON
	}
	var res struct {
		Jobs []struct {
			Error int `json:"error"`
			Read  struct {
				IOPS    float64 `json:"iops"`
				IOBytes int64   `json:"io_bytes"`
			} `json:"read"`
		} `json:"jobs"`
	}
	if err := json.Unmarshal(js, &res); err != nil {
		return 0, fmt.Errorf("fio output: %v: %s", err, tail(out.String(), 500))
	}
	if len(res.Jobs) != 1 {
		return 0, errors.New("fio output has no job")
	}
	if j := res.Jobs[0]; j.Error != 0 || j.Read.IOBytes == 0 {
		return 0, fmt.Errorf("fio: job error %d, %d bytes read: %s", j.Error, j.Read.IOBytes, tail(stderr.String(), 500))
	}
	return res.Jobs[0].Read.IOPS, nil
}

// command is exec.CommandContext for a workload: its own process group,
// killed with us.
func command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 10 * time.Second
	return cmd
}

// makeTree writes a tar of n files of 1 to 40 KiB in nested directories,
// the same bytes every run, and returns each file's path and size.
func makeTree(tarPath string, n int) (map[string]int64, error) {
	rng := rand.New(rand.NewPCG(6, 400))
	mtime := time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)
	files := map[string]int64{}
	dirs := map[string]bool{}
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("tree/d%02d/s%d/f%03d.dat", i%20, (i/20)%4, i)
		files[names[i]] = int64(1024 + rng.IntN(39*1024+1))
		for d := path.Dir(names[i]); d != "."; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	f, err := os.Create(tarPath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	dirList := make([]string, 0, len(dirs))
	for d := range dirs {
		dirList = append(dirList, d)
	}
	sort.Strings(dirList)
	for _, d := range dirList {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755, ModTime: mtime,
			Uname: "root", Gname: "root"}); err != nil {
			return nil, err
		}
	}
	for _, name := range names {
		size := files[name]
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: size,
			ModTime: mtime, Uname: "root", Gname: "root"}); err != nil {
			return nil, err
		}
		data := make([]byte, size)
		for i := range data {
			data[i] = byte(rng.Uint32())
		}
		if _, err := tw.Write(data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return files, f.Close()
}
