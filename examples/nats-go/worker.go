// Command worker is an Agent Fabric worker in Go that talks to the fabric over NATS only. It is
// written from the wire protocol in the repository README ("NATS wire protocol (for workers in
// other languages)"), with the NATS client (github.com/nats-io/nats.go) and Go's standard library
// as its only dependencies: nothing of the fabric's own code.
//
// It runs one agent's tasks: those pinned to the agent and, with POOL_ID, those queued to its
// pool, one at a time from each. Task types:
//
//	word-count  payload {"text": "..."}  → result {"words": n, "by": "go"}
//	sleep       payload {"ms": n}        → result {"slept": n}, or stops when the task ends
//	fail        any payload              → fails with error code "BAD_INPUT" (not retried)
//
// Any other type fails with "UNKNOWN_TASK_TYPE". Configuration, from the environment:
//
//	NATS_URL          nats://127.0.0.1:4222 unless set
//	NATS_TOKEN        optional token authentication
//	FABRIC_NAMESPACE  the sidecar's nats.namespace ("default" unless set)
//	AGENT_ID          the agent this worker runs as
//	AGENT_CREDENTIAL  that agent's credential (never sent: it keys the HMAC proofs)
//	POOL_ID           optional: the agent's pool
//	HEARTBEAT_SECONDS 5 unless set
//
// It prints "ready" once its first heartbeat was accepted, then a line per task: "started <task>
// <attempt>", "done <task> <attempt> complete|fail", "aborted <task> <attempt>" (the fabric ended
// the attempt: cancel or timeout) or "refused <task> <attempt> <code>". Errors go to stderr; a
// heartbeat the fabric refuses or nobody answers at start, an agent that is not in POOL_ID, a
// start refused FABRIC_ERR_PERMISSION_DENIED (the agent was terminated: the message goes back to
// the pool), or a heartbeat refused with status TERMINATED ends the process with status 1.
package main

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf16"

	"github.com/nats-io/nats.go"
)

// task is the task message a sidecar publishes to the stream.
type task struct {
	V              int             `json:"v"`
	TaskID         string          `json:"taskId"`
	Attempt        int             `json:"attempt"`
	TaskType       string          `json:"taskType"`
	Payload        json.RawMessage `json:"payload"`
	Deadline       *float64        `json:"deadline"`
	TimeoutSeconds float64         `json:"timeoutSeconds"`
	MaxAttempts    int             `json:"maxAttempts"`
	AgentID        *string         `json:"agentId"`
	PoolID         *string         `json:"poolId"`
	ReplyTo        string          `json:"replyTo"`
	Lease          string          `json:"lease"`
}

// taskError is a report's error.
type taskError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// report is what a worker sends to the scheduling sidecar's replyTo.
type report struct {
	Kind    string      `json:"kind"`
	TaskID  string      `json:"taskId"`
	Attempt int         `json:"attempt"`
	Lease   string      `json:"lease"`
	AgentID string      `json:"agentId"`
	Proof   string      `json:"proof"`
	Result  interface{} `json:"result,omitempty"`
	Error   *taskError  `json:"error,omitempty"`
	Retry   *bool       `json:"retry,omitempty"`
	Take    string      `json:"take,omitempty"`
	Seq     uint64      `json:"seq,omitempty"`
	Nonce   string      `json:"nonce,omitempty"`
	Counter int         `json:"counter,omitempty"`
}

// answer is a sidecar's answer to a report or a heartbeat (a heartbeat's names the agent's pool:
// a string, or null for none; its refusal FABRIC_ERR_AGENT_UNAVAILABLE names the agent's status,
// TERMINATED or DRAINING), with its MAC.
type answer struct {
	OK      bool            `json:"ok"`
	Status  string          `json:"status"`
	PoolID  json.RawMessage `json:"poolId"`
	Code    string          `json:"code"`
	Message string          `json:"message"`
	Mac     string          `json:"mac"`
}

// refusal is the code and the message of a refusal as the MAC's fields, empty for ok.
func (a *answer) refusal() (string, string) {
	if a.OK {
		return "", ""
	}
	return field(a.Code), field(a.Message)
}

// macEscaper writes a string field of an answer's MAC: % as %25, : as %3a, ~ as %7e.
var macEscaper = strings.NewReplacer("%", "%25", ":", "%3a", "~", "%7e")

// field is a string as a field of an answer's MAC.
func field(s string) string { return macEscaper.Replace(s) }

// answerMac is the MAC a sidecar's answer carries: HMAC-SHA256 under key over "answer" followed
// by each field after a ":", base64url without padding. The fields come written as the README
// says: a string through field, a number in decimal, true or false, "~" for null, "" when absent.
func answerMac(key []byte, fields ...string) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte("answer"))
	for _, f := range fields {
		m.Write([]byte(":" + f))
	}
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// genuine compares a MAC in constant time.
func genuine(mac, want string) bool {
	return hmac.Equal([]byte(mac), []byte(want))
}

// errNoResponders: nobody listens on the request's subject (the sidecar is gone).
var errNoResponders = errors.New("no responders")

// request sends body to subject and returns the first answer that ok accepts (its MAC is right):
// any client may publish on the reply subject, and what is not the sidecar's answer is ignored
// while the wait lasts. An error when none came within timeout, or nobody listens there.
func (w *worker) request(subject string, body []byte, timeout time.Duration, ok func(*answer) bool) (answer, error) {
	inbox := w.nc.NewInbox()
	sub, err := w.nc.SubscribeSync(inbox)
	if err != nil {
		return answer{}, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := w.nc.PublishRequest(subject, inbox, body); err != nil {
		return answer{}, err
	}
	deadline := time.Now().Add(timeout)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return answer{}, nats.ErrTimeout
		}
		m, err := sub.NextMsg(left)
		if err != nil {
			return answer{}, err
		}
		if len(m.Data) == 0 && m.Header.Get("Status") == "503" {
			return answer{}, errNoResponders
		}
		var a answer
		if json.Unmarshal(m.Data, &a) == nil && ok(&a) {
			return a, nil
		}
	}
}

// ended is a sidecar's notice that it ended an attempt, with its MAC under the attempt's lease.
type ended struct {
	TaskID  string `json:"taskId"`
	Attempt int    `json:"attempt"`
	Code    string `json:"code"`
	Mac     string `json:"mac"`
}

type worker struct {
	nc        *nats.Conn
	js        nats.JetStreamContext
	namespace string
	agentID   string
	key       []byte // the lowercase hex SHA-256 of the credential, as ASCII: the HMAC key

	mu      sync.Mutex
	running map[string]*run // task id → the attempt this worker runs
	lastTs  int64
	out     sync.Mutex // one line at a time on stdout
}

type run struct {
	attempt int
	lease   string
	cancel  context.CancelFunc
	ended   bool
}

func main() {
	if err := mainErr(); err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		os.Exit(1)
	}
}

func mainErr() error {
	agentID, credential := os.Getenv("AGENT_ID"), os.Getenv("AGENT_CREDENTIAL")
	if agentID == "" || credential == "" {
		return errors.New("AGENT_ID and AGENT_CREDENTIAL must be set")
	}
	url := envOr("NATS_URL", nats.DefaultURL)
	opts := []nats.Option{nats.Name("fabric-go-worker"), nats.MaxReconnects(-1)}
	if t := os.Getenv("NATS_TOKEN"); t != "" {
		opts = append(opts, nats.Token(t))
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return fmt.Errorf("connecting to %s: %w", url, err)
	}
	defer nc.Close()
	js, err := nc.JetStream()
	if err != nil {
		return err
	}
	sum := sha256.Sum256([]byte(credential))
	w := &worker{
		nc:        nc,
		js:        js,
		namespace: envOr("FABRIC_NAMESPACE", "default"),
		agentID:   agentID,
		key:       []byte(hex.EncodeToString(sum[:])),
		running:   map[string]*run{},
	}
	interval := 5 * time.Second
	if s := os.Getenv("HEARTBEAT_SECONDS"); s != "" {
		n, err := strconv.ParseFloat(s, 64)
		if err != nil || n <= 0 {
			return fmt.Errorf("HEARTBEAT_SECONDS: not a positive number: %q", s)
		}
		interval = time.Duration(n * float64(time.Second))
	}
	// The first heartbeat must be accepted: it proves the credential before any task is taken.
	// Its answer names the agent's pool: a worker told to serve another pool stops here (the
	// sidecar would refuse its starts, and it would terminate that pool's messages).
	first, err := w.heartbeat()
	if err != nil {
		return err
	}
	if pool := os.Getenv("POOL_ID"); pool != "" && len(first.PoolID) > 0 {
		var its *string
		if err := json.Unmarshal(first.PoolID, &its); err != nil || its == nil || *its != pool {
			return fmt.Errorf("agent %s is not in pool %q (its pool: %s)", agentID, pool, first.PoolID)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() {
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				a, err := w.heartbeat()
				if err != nil {
					fmt.Fprintln(os.Stderr, "worker:", err)
				}
				// Refused under a right MAC, with the agent's status as a field (never read out
				// of the message): a terminated agent's attempts were ended, and the fabric takes
				// no more reports from it.
				if err != nil && a.Code == "FABRIC_ERR_AGENT_UNAVAILABLE" && a.Status == "TERMINATED" {
					fmt.Fprintf(os.Stderr, "worker: the fabric takes no reports from agent %s: %s: %s (status %s)\n",
						agentID, a.Code, a.Message, a.Status)
					os.Exit(1)
				}
			}
		}
	}()
	// The sidecar announces the attempts it ends (cancel, timeout) on ended.<taskId>.
	if _, err := nc.Subscribe(w.subject("ended.*"), w.onEnded); err != nil {
		return err
	}
	consumers := []string{"agent-" + token(agentID)}
	if pool := os.Getenv("POOL_ID"); pool != "" {
		consumers = append(consumers, consumerName("pool", pool))
	}
	stream := "FABRIC_" + w.namespace + "_TASKS"
	var wg sync.WaitGroup
	for _, c := range consumers {
		sub, ackWait, err := w.bind(ctx, stream, c)
		if err != nil {
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.pull(ctx, sub, ackWait)
		}()
	}
	w.println("ready")
	wg.Wait()
	return nil
}

func envOr(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}

// token escapes an id for a subject or a consumer name: each UTF-16 code unit outside
// [A-Za-z0-9-] as _xx below 0x100, __xxxx from 0x100 on.
func token(id string) string {
	var b strings.Builder
	for _, r := range id {
		units := []rune{r}
		if r > 0xffff { // a surrogate pair in UTF-16
			r -= 0x10000
			units = []rune{0xd800 + (r >> 10), 0xdc00 + (r & 0x3ff)}
		}
		for _, u := range units {
			switch {
			case u >= 'A' && u <= 'Z', u >= 'a' && u <= 'z', u >= '0' && u <= '9', u == '-':
				b.WriteRune(u)
			case u < 0x100:
				fmt.Fprintf(&b, "_%02x", u)
			default:
				fmt.Fprintf(&b, "__%04x", u)
			}
		}
	}
	return b.String()
}

// consumerName is <kind>-<token>, or <kind>-_h<SHA-256 hex of the token> past 255 characters.
func consumerName(kind, id string) string {
	name := kind + "-" + token(id)
	if len(name) <= 255 {
		return name
	}
	sum := sha256.Sum256([]byte(token(id)))
	return kind + "-_h" + hex.EncodeToString(sum[:])
}

func (w *worker) subject(rest string) string { return "fabric." + w.namespace + "." + rest }

// proof is HMAC-SHA256 under the credential's hash, base64url without padding.
func (w *worker) proof(text string) string {
	m := hmac.New(sha256.New, w.key)
	m.Write([]byte(text))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

func (w *worker) println(format string, args ...interface{}) {
	w.out.Lock()
	defer w.out.Unlock()
	fmt.Printf(format+"\n", args...)
}

// heartbeat sends one heartbeat as a request: the answer, or an error when it is refused or
// unanswered.
func (w *worker) heartbeat() (answer, error) {
	w.mu.Lock()
	ts := time.Now().UnixMilli()
	if ts <= w.lastTs { // timestamps must grow
		ts = w.lastTs + 1
	}
	w.lastTs = ts
	w.mu.Unlock()
	body, _ := json.Marshal(map[string]interface{}{
		"ts":    ts,
		"proof": w.proof(fmt.Sprintf("hb:%s:%d", w.agentID, ts)),
	})
	// The answer's MAC: under the credential's hash over the agent, this heartbeat's ts and the
	// answer (a refusal's code and message; ok's status and pool).
	a, err := w.request(w.subject("hb."+token(w.agentID)), body, 5*time.Second, func(a *answer) bool {
		code, message := a.refusal()
		// The status in both: an ok answer's, and a refusal's (the agent is TERMINATED or
		// DRAINING), which this worker acts on.
		status, pool := field(a.Status), ""
		if a.OK {
			var p *string
			if len(a.PoolID) > 0 {
				if json.Unmarshal(a.PoolID, &p) != nil {
					return false
				}
				pool = "~"
				if p != nil {
					pool = field(*p)
				}
			}
		}
		return genuine(a.Mac, answerMac(w.key, "hb", field(w.agentID), strconv.FormatInt(ts, 10),
			strconv.FormatBool(a.OK), code, message, status, pool))
	})
	if err != nil {
		return answer{}, fmt.Errorf("heartbeat of agent %s: no sidecar answered with a valid MAC (%v): an unknown agent, a wrong credential or another namespace", w.agentID, err)
	}
	if !a.OK {
		return a, fmt.Errorf("heartbeat refused: %s: %s", a.Code, a.Message)
	}
	return a, nil
}

// bind waits for the consumer (the sidecar makes it when the agent is attached) and pulls from
// it; AckWait says how often a held message needs an in-progress ack.
func (w *worker) bind(ctx context.Context, stream, consumer string) (*nats.Subscription, time.Duration, error) {
	for {
		info, err := w.js.ConsumerInfo(stream, consumer)
		if err == nil {
			sub, err := w.js.PullSubscribe(info.Config.FilterSubject, "", nats.Bind(stream, consumer))
			return sub, info.Config.AckWait, err
		}
		if !errors.Is(err, nats.ErrConsumerNotFound) && !errors.Is(err, nats.ErrStreamNotFound) {
			return nil, 0, fmt.Errorf("consumer %s of %s: %w", consumer, stream, err)
		}
		select {
		case <-ctx.Done():
			return nil, 0, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (w *worker) pull(ctx context.Context, sub *nats.Subscription, ackWait time.Duration) {
	for ctx.Err() == nil {
		msgs, err := sub.Fetch(1, nats.MaxWait(time.Second))
		if err != nil {
			if !errors.Is(err, nats.ErrTimeout) && ctx.Err() == nil {
				fmt.Fprintln(os.Stderr, "worker: fetch:", err)
				time.Sleep(200 * time.Millisecond)
			}
			continue
		}
		for _, m := range msgs {
			w.handle(m, ackWait)
		}
	}
}

// handle runs one delivered message: in-progress acks while it is held, start, the handler,
// the outcome, then the ack.
func (w *worker) handle(m *nats.Msg, ackWait time.Duration) {
	pulled := time.Now()
	held := make(chan struct{})
	defer close(held)
	go func() { // in-progress acks every third of AckWait, from the pull on
		t := time.NewTicker(ackWait / 3)
		defer t.Stop()
		for {
			select {
			case <-held:
				return
			case <-t.C:
				_ = m.InProgress()
			}
		}
	}()
	var t task
	if err := json.Unmarshal(m.Data, &t); err != nil || t.V != 1 || t.TaskID == "" || t.ReplyTo == "" {
		fmt.Fprintln(os.Stderr, "worker: not a task message; terminated")
		_ = m.Term()
		return
	}
	meta, err := m.Metadata()
	if err != nil {
		_ = m.Term()
		return
	}
	// Reports are retried until answered, at most until the task's timeout has passed.
	giveUp := pulled.Add(time.Duration(t.TimeoutSeconds * float64(time.Second)))
	take := randomTake()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	w.mu.Lock()
	r := &run{attempt: t.Attempt, lease: t.Lease, cancel: cancel}
	w.running[t.TaskID] = r
	w.mu.Unlock()
	defer func() {
		w.mu.Lock()
		if w.running[t.TaskID] == r {
			delete(w.running, t.TaskID)
		}
		w.mu.Unlock()
	}()

	// Each report of this take-up is numbered (1 for the start), under its proof: the sidecar
	// refuses an earlier one replayed after a later one.
	a, ok := w.report(&t, report{Kind: "start", Take: take, Seq: meta.Sequence.Stream, Counter: 1}, giveUp)
	if ok && a.Code == "FABRIC_ERR_PERMISSION_DENIED" {
		// A genuine message this agent may not report on (terminated, or not in the pool): back
		// to the task's own workers, and this worker stops. No pull of this consumer is open
		// while a message is handled, so it is not delivered here again.
		_ = m.Nak()
		_ = w.nc.Flush()
		fmt.Fprintf(os.Stderr, "worker: the fabric takes no reports from agent %s: %s\n", w.agentID, a.Message)
		os.Exit(1)
	}
	if !ok || !a.OK {
		code := a.Code
		if !ok {
			code = "NO_ANSWER"
		}
		w.println("refused %s %d %s", t.TaskID, t.Attempt, code)
		_ = m.Term() // without a reason text: nats-server 2.9 would redeliver
		return
	}
	w.println("started %s %d", t.TaskID, t.Attempt)
	result, failure := runTask(ctx, t.TaskType, t.Payload)
	w.mu.Lock()
	aborted := r.ended
	w.mu.Unlock()
	if aborted {
		w.println("aborted %s %d", t.TaskID, t.Attempt)
		_ = m.Term()
		return
	}
	out := report{Kind: "complete", Take: take, Result: result, Counter: 2}
	if failure != nil {
		no := false
		out = report{Kind: "fail", Take: take, Error: failure, Retry: &no, Counter: 2}
	}
	if a, ok := w.report(&t, out, giveUp); !ok || !a.OK {
		code := a.Code
		if !ok {
			code = "NO_ANSWER"
		}
		w.println("refused %s %d %s", t.TaskID, t.Attempt, code)
		_ = m.Term()
		return
	}
	_ = m.AckSync()
	w.println("done %s %d %s", t.TaskID, t.Attempt, out.Kind)
}

// report signs r for task t and sends it to the task's sidecar until it answers or giveUp.
func (w *worker) report(t *task, r report, giveUp time.Time) (answer, bool) {
	r.TaskID, r.Attempt, r.Lease, r.AgentID = t.TaskID, t.Attempt, t.Lease, w.agentID
	// This report's own id (re-sends repeat it): no answer to another report verifies for it.
	r.Nonce = randomTake()
	content, err := contentDigest(&r)
	if err != nil {
		return answer{}, false
	}
	// The proof covers everything the sidecar acts on: the ids, the take-up, the copy taken up,
	// this report's nonce, the digest of its content and, last, its counter.
	seq := ""
	if r.Seq != 0 {
		seq = strconv.FormatUint(r.Seq, 10)
	}
	fields := []string{"report", r.Kind, field(w.agentID), field(t.TaskID),
		strconv.Itoa(t.Attempt), field(r.Take), seq, field(r.Nonce), content}
	if r.Counter != 0 {
		fields = append(fields, strconv.Itoa(r.Counter))
	}
	r.Proof = w.proof(strings.Join(fields, ":"))
	body, err := json.Marshal(r)
	if err != nil {
		return answer{}, false
	}
	// The answer's MAC: under the report's lease over its kind, agent, task, attempt and take-up,
	// the answer (ok, a refusal's code and message) and the report's nonce.
	mine := func(a *answer) bool {
		code, message := a.refusal()
		return genuine(a.Mac, answerMac([]byte(t.Lease), r.Kind, field(w.agentID), field(t.TaskID),
			strconv.Itoa(t.Attempt), field(r.Take), strconv.FormatBool(a.OK), code, message,
			field(r.Nonce)))
	}
	for {
		if a, err := w.request(t.ReplyTo, body, 5*time.Second, mine); err == nil {
			return a, true
		}
		if time.Now().After(giveUp) {
			return answer{}, false
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// contentDigest is the digest a report's proof covers of what it carries besides its ids:
// base64url (no padding) SHA-256 of the canonical JSON (RFC 8785) of the object made of the
// members error, progress, result and retry that the report has, as the sidecar reads them
// (so marshalled and read back first: the sidecar sees the JSON, not the Go values).
func contentDigest(r *report) (string, error) {
	content := map[string]interface{}{}
	if r.Result != nil {
		content["result"] = r.Result
	}
	if r.Error != nil {
		content["error"] = r.Error
	}
	if r.Retry != nil {
		content["retry"] = *r.Retry
	}
	raw, err := json.Marshal(content)
	if err != nil {
		return "", err
	}
	var read interface{}
	if err := json.Unmarshal(raw, &read); err != nil {
		return "", err
	}
	var b strings.Builder
	canonical(&b, read)
	sum := sha256.Sum256([]byte(b.String()))
	return base64.RawURLEncoding.EncodeToString(sum[:]), nil
}

// canonical writes a value read by encoding/json as RFC 8785 canonical JSON: no whitespace,
// members sorted by their names' UTF-16 code units, strings and numbers as ECMAScript's
// JSON.stringify writes them.
func canonical(b *strings.Builder, v interface{}) {
	switch x := v.(type) {
	case nil:
		b.WriteString("null")
	case bool:
		b.WriteString(strconv.FormatBool(x))
	case float64:
		b.WriteString(esNumber(x))
	case string:
		esString(b, x)
	case []interface{}:
		b.WriteByte('[')
		for i, e := range x {
			if i > 0 {
				b.WriteByte(',')
			}
			canonical(b, e)
		}
		b.WriteByte(']')
	case map[string]interface{}:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Slice(keys, func(i, j int) bool { return lessUTF16(keys[i], keys[j]) })
		b.WriteByte('{')
		for i, k := range keys {
			if i > 0 {
				b.WriteByte(',')
			}
			esString(b, k)
			b.WriteByte(':')
			canonical(b, x[k])
		}
		b.WriteByte('}')
	}
}

// lessUTF16 orders strings by their UTF-16 code units (as JavaScript sorts them).
func lessUTF16(a, b string) bool {
	ua, ub := utf16.Encode([]rune(a)), utf16.Encode([]rune(b))
	for i := 0; i < len(ua) && i < len(ub); i++ {
		if ua[i] != ub[i] {
			return ua[i] < ub[i]
		}
	}
	return len(ua) < len(ub)
}

// esNumber writes a number as ECMAScript does: fixed notation from 1e-6 up to 1e21, else the
// shortest exponent form with as few exponent digits as needed (1e-7, 1e+21); -0 as 0.
func esNumber(f float64) string {
	if f == 0 {
		return "0"
	}
	if abs := math.Abs(f); abs >= 1e-6 && abs < 1e21 {
		return strconv.FormatFloat(f, 'f', -1, 64)
	}
	s := strconv.FormatFloat(f, 'e', -1, 64) // e.g. 1e-07: two exponent digits at least
	i := strings.IndexByte(s, 'e')
	exp := strings.TrimLeft(s[i+2:], "0")
	return s[:i+2] + exp
}

// esString writes a string as JSON.stringify does: " and \ escaped, \b \t \n \f \r, other
// characters below U+0020 as \u00xx, everything else as it is.
func esString(b *strings.Builder, s string) {
	b.WriteByte('"')
	for _, c := range s {
		switch c {
		case '"':
			b.WriteString(`\"`)
		case '\\':
			b.WriteString(`\\`)
		case '\b':
			b.WriteString(`\b`)
		case '\t':
			b.WriteString(`\t`)
		case '\n':
			b.WriteString(`\n`)
		case '\f':
			b.WriteString(`\f`)
		case '\r':
			b.WriteString(`\r`)
		default:
			if c < 0x20 {
				fmt.Fprintf(b, "\\u%04x", c)
			} else {
				b.WriteRune(c)
			}
		}
	}
	b.WriteByte('"')
}

// onEnded stops the handler of an attempt the sidecar ended.
func (w *worker) onEnded(m *nats.Msg) {
	var n ended
	// Only the notice of the task its subject names (anyone may publish on ended.*).
	if json.Unmarshal(m.Data, &n) != nil || m.Subject != w.subject("ended."+token(n.TaskID)) {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	// Only a notice under the lease of the attempt's message: HMAC-SHA256 keyed by the lease
	// string over "ended:<taskId>:<attempt>", base64url without padding.
	if r := w.running[n.TaskID]; r != nil && r.attempt == n.Attempt {
		m := hmac.New(sha256.New, []byte(r.lease))
		m.Write([]byte(fmt.Sprintf("ended:%s:%d", n.TaskID, n.Attempt)))
		if !hmac.Equal([]byte(base64.RawURLEncoding.EncodeToString(m.Sum(nil))), []byte(n.Mac)) {
			return
		}
		r.ended = true
		r.cancel()
	}
}

func randomTake() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// runTask is the work itself: a result, or an error to report.
func runTask(ctx context.Context, taskType string, payload json.RawMessage) (interface{}, *taskError) {
	switch taskType {
	case "word-count":
		var p struct {
			Text string `json:"text"`
		}
		if err := json.Unmarshal(payload, &p); err != nil {
			return nil, &taskError{Code: "BAD_INPUT", Message: "payload must be {\"text\": string}"}
		}
		return map[string]interface{}{"words": len(strings.Fields(p.Text)), "by": "go"}, nil
	case "sleep":
		var p struct {
			Ms int `json:"ms"`
		}
		if err := json.Unmarshal(payload, &p); err != nil || p.Ms < 0 {
			return nil, &taskError{Code: "BAD_INPUT", Message: "payload must be {\"ms\": n ≥ 0}"}
		}
		select {
		case <-ctx.Done():
			return nil, &taskError{Code: "ABORTED", Message: "the attempt was ended"}
		case <-time.After(time.Duration(p.Ms) * time.Millisecond):
			return map[string]interface{}{"slept": p.Ms}, nil
		}
	case "fail":
		return nil, &taskError{Code: "BAD_INPUT", Message: "this task always fails"}
	default:
		return nil, &taskError{Code: "UNKNOWN_TASK_TYPE", Message: "no handler for " + strconv.Quote(taskType)}
	}
}
