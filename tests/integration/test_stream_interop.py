"""Interoperability with the libraries the kubelet and crictl use:
moby/spdystream (client-go's SPDY transport) and gorilla/websocket, driven in
client-go's call order by a small Go program built here.

Needs Debian's golang-go, golang-github-docker-spdystream-dev (which ships
github.com/moby/spdystream) and golang-github-gorilla-websocket-dev; skipped
without them."""

import json
import os
import shutil
import subprocess

import pytest

from lab import streaming as st

GOPATH = "/usr/share/gocode"
NEEDED = ["github.com/moby/spdystream", "github.com/gorilla/websocket"]

GO_SOURCE = r"""// Drives the streaming server with the libraries the kubelet and crictl use
// (moby/spdystream, gorilla/websocket), following client-go's call order.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/gorilla/websocket"
	"github.com/moby/spdystream"
)

type result struct {
	Protocol string `json:"protocol"`
	Stdout   string `json:"stdout"`
	Stderr   string `json:"stderr"`
	Error    string `json:"error"`
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "interop:", err)
	os.Exit(1)
}

func dialSPDY(raw string, protocol string) (*spdystream.Connection, string) {
	u, err := url.Parse(raw)
	if err != nil {
		fail(err)
	}
	conn, err := net.DialTimeout("tcp", u.Host, 5*time.Second)
	if err != nil {
		fail(err)
	}
	req, _ := http.NewRequest("POST", raw, nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "SPDY/3.1")
	req.Header.Add("X-Stream-Protocol-Version", protocol)
	if err := req.Write(conn); err != nil {
		fail(err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		fail(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		fail(fmt.Errorf("upgrade: %s", resp.Status))
	}
	if br.Buffered() > 0 {
		fail(fmt.Errorf("unexpected bytes after the upgrade"))
	}
	sc, err := spdystream.NewConnection(conn, false)
	if err != nil {
		fail(err)
	}
	go sc.Serve(spdystream.NoOpStreamHandler)
	return sc, resp.Header.Get("X-Stream-Protocol-Version")
}

func stream(sc *spdystream.Connection, kv ...string) *spdystream.Stream {
	h := http.Header{}
	for i := 0; i < len(kv); i += 2 {
		h.Set(kv[i], kv[i+1])
	}
	s, err := sc.CreateStream(h, nil, false)
	if err != nil {
		fail(err)
	}
	if err := s.WaitTimeout(5 * time.Second); err != nil {
		fail(fmt.Errorf("stream %v: %v", kv, err))
	}
	return s
}

// exec URL stdin tty: the remotecommand v4 flow.
func spdyExec(raw, stdin string, tty bool) {
	sc, proto := dialSPDY(raw, "v4.channel.k8s.io")
	errS := stream(sc, "streamType", "error")
	inS := stream(sc, "streamType", "stdin")
	outS := stream(sc, "streamType", "stdout")
	var errOut *spdystream.Stream
	if !tty {
		errOut = stream(sc, "streamType", "stderr")
	} else {
		rs := stream(sc, "streamType", "resize")
		json.NewEncoder(rs).Encode(map[string]int{"Width": 90, "Height": 30})
	}
	inS.Write([]byte(stdin))
	inS.Close()
	out, _ := io.ReadAll(outS)
	var errData []byte
	if errOut != nil {
		errData, _ = io.ReadAll(errOut)
	}
	status, _ := io.ReadAll(errS)
	sc.Close()
	json.NewEncoder(os.Stdout).Encode(result{proto, string(out), string(errData), string(status)})
}

// portforward URL port payload: client-go's handleConnection flow.
func spdyForward(raw, port, payload string) {
	sc, proto := dialSPDY(raw, "portforward.k8s.io")
	errS := stream(sc, "streamType", "error", "port", port, "requestID", "0")
	errS.Close()
	dataS := stream(sc, "streamType", "data", "port", port, "requestID", "0")
	dataS.Write([]byte(payload))
	dataS.Close()
	out, _ := io.ReadAll(dataS)
	dataS.Reset()
	msg, _ := io.ReadAll(errS)
	sc.Close()
	json.NewEncoder(os.Stdout).Encode(result{proto, string(out), "", string(msg)})
}

// wsexec URL stdin: the v5 websocket executor's framing.
func wsExec(raw, stdin string) {
	d := websocket.Dialer{Subprotocols: []string{"v5.channel.k8s.io", "v4.channel.k8s.io"}}
	c, _, err := d.Dial(strings.Replace(raw, "http://", "ws://", 1), nil)
	if err != nil {
		fail(err)
	}
	c.WriteMessage(websocket.BinaryMessage, append([]byte{0}, []byte(stdin)...))
	c.WriteMessage(websocket.BinaryMessage, []byte{255, 0})
	var r result
	r.Protocol = c.Subprotocol()
	for {
		_, m, err := c.ReadMessage()
		if err != nil {
			if !websocket.IsCloseError(err, websocket.CloseNormalClosure) {
				fail(err)
			}
			break
		}
		if len(m) == 0 {
			continue
		}
		switch m[0] {
		case 1:
			r.Stdout += string(m[1:])
		case 2:
			r.Stderr += string(m[1:])
		case 3:
			r.Error += string(m[1:])
		}
	}
	c.Close()
	json.NewEncoder(os.Stdout).Encode(r)
}

func main() {
	switch os.Args[1] {
	case "exec":
		spdyExec(os.Args[2], os.Args[3], os.Args[4] == "tty")
	case "portforward":
		spdyForward(os.Args[2], os.Args[3], os.Args[4])
	case "wsexec":
		wsExec(os.Args[2], os.Args[3])
	}
}
"""


@pytest.fixture(scope="module")
def interop(tmp_path_factory):
    if not shutil.which("go") or not all(
            os.path.isdir(os.path.join(GOPATH, "src", p)) for p in NEEDED):
        pytest.skip("needs golang-go, golang-github-docker-spdystream-dev and "
                    "golang-github-gorilla-websocket-dev")
    d = tmp_path_factory.mktemp("interop")
    (d / "interop.go").write_text(GO_SOURCE)
    env = dict(os.environ, GO111MODULE="off", GOPATH=GOPATH, GOCACHE=str(d / "cache"),
               GOFLAGS="")
    subprocess.run(["go", "build", "-o", str(d / "interop"), str(d / "interop.go")],
                   check=True, env=env, timeout=300)

    def run(*args):
        p = subprocess.run([str(d / "interop"), *args], capture_output=True, text=True,
                           timeout=30)
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)
    return run


def test_spdystream_exec(testd, interop):
    url = testd.exec_url(["sh", "-c", "cat; echo E >&2; exit 3"], stdin=True)
    r = interop("exec", url, "from go\n", "notty")
    assert r["protocol"] == "v4.channel.k8s.io"
    assert (r["stdout"], r["stderr"]) == ("from go\n", "E\n")
    status = json.loads(r["error"])
    assert status["reason"] == "NonZeroExitCode"
    assert status["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]


def test_spdystream_exec_tty_resize(testd, interop):
    url = testd.exec_url(["sh", "-c", "read x; stty size"], stdin=True, tty=True)
    r = interop("exec", url, "go\n", "tty")
    assert r["stdout"].splitlines()[-1] == "30 90"
    assert json.loads(r["error"])["status"] == "Success"


def test_spdystream_port_forward(testd, interop):
    echo = st.EchoServer()
    try:
        r = interop("portforward", testd.forward_url(), str(echo.port), "go data")
        assert (r["stdout"], r["error"]) == ("GO DATA", "")
        echo.stop()
        r = interop("portforward", testd.forward_url(id="sb-go"), str(echo.port), "x")
        assert r["stdout"] == "" and "to pod sb-go" in r["error"]
    finally:
        echo.stop()


def test_gorilla_websocket_v5_exec(testd, interop):
    url = testd.exec_url(["sh", "-c", "cat; exit 4"], stdin=True)
    r = interop("wsexec", url, "ws from go\n")
    assert r["protocol"] == "v5.channel.k8s.io"
    assert r["stdout"] == "ws from go\n"
    assert json.loads(r["error"])["details"]["causes"][0]["message"] == "4"
