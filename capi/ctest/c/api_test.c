/*
 * api_test.c - the C API from C, against a running packet-ipcd on its default
 * configuration (run by ../tests/c_programs.rs, under valgrind and linked statically).
 *
 *   api_test [SERVER]
 *
 * Checks the argument checks and error reporting, then sends packets with every kind of
 * edge (empty, jumbo, cut short, origlen below caplen, timestamps 0 and UINT64_MAX) through
 * the daemon to a subscriber in the same process and checks that every byte, length and
 * timestamp arrived (and that a packet over the server's snaplen is cut to it), reading
 * one batch from several threads at once and one batch after its subscriber was freed.
 * Then filters (UDP and TCP frames built here; the filter changed mid-stream), a group of
 * two members that together receive every packet once, each flow to one member, the
 * first member seeing its flows reassigned when the second joins, and source drops
 * reported by a producer: SOURCE_DROPS in all, which ../tests/c_programs.rs checks in
 * the daemon's stats once this program is done. Prints "N passed, N failed" and exits
 * non-zero on a failure.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <packet_ipc.h>

static int passed, failed;

#define CHECK(cond, ...)                                                                  \
    do {                                                                                  \
        if (cond) {                                                                       \
            passed++;                                                                     \
        } else {                                                                          \
            failed++;                                                                     \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);               \
            fprintf(stderr, __VA_ARGS__);                                                 \
            fprintf(stderr, " [last error: %s]\n", pipc_last_error());                    \
        }                                                                                 \
    } while (0)

/* ---- the packets sent: packet g (numbered across batches) ---- */

#define BATCHES 40
#define JUMBO 9000
#define SNAPLEN 65535u /* of the embedded default configuration's server */
#define LONG_FRAME 70000u

static uint32_t caplen_of(uint64_t g)
{
    if (g % 11 == 0)
        return 0;
    if (g % 13 == 0)
        return JUMBO;
    return (uint32_t)((g * 53) % 1600);
}

static uint32_t origlen_sent(uint64_t g)
{
    if (g % 7 == 0)
        return 0; /* below caplen: the library raises it to caplen */
    if (g % 3 == 0)
        return caplen_of(g) + 1000;
    return caplen_of(g);
}

static uint32_t origlen_expected(uint64_t g)
{
    uint32_t o = origlen_sent(g);
    return o < caplen_of(g) ? caplen_of(g) : o;
}

static uint64_t ts_of(uint64_t g)
{
    if (g == 1)
        return 0;
    if (g == 2)
        return UINT64_MAX;
    return 1700000000000000001ULL + g * 999999937ULL;
}

static uint8_t byte_of(uint64_t g, uint32_t k)
{
    return (uint8_t)(g * 131 + k * 7 + (k >> 8));
}

static size_t batch_size(int b)
{
    return 1 + (size_t)((b * 37) % 100);
}

/* Fills buf with packet g and points pkt at it (data is NULL for an empty packet). */
static void make_packet(uint64_t g, uint8_t *buf, pipc_packet *pkt)
{
    uint32_t n = caplen_of(g);
    for (uint32_t k = 0; k < n; k++)
        buf[k] = byte_of(g, k);
    pkt->ts_nanos = ts_of(g);
    pkt->caplen = n;
    pkt->origlen = origlen_sent(g);
    pkt->data = n == 0 ? NULL : buf;
}

/* Checks that packet i of b is packet g; returns 1 if all is right. */
static int packet_is(const pipc_batch *b, size_t i, uint64_t g)
{
    pipc_packet p;
    memset(&p, 0, sizeof p);
    if (pipc_batch_get(b, i, &p) != PIPC_OK)
        return 0;
    if (p.ts_nanos != ts_of(g) || p.caplen != caplen_of(g) || p.origlen != origlen_expected(g))
        return 0;
    if (p.data == NULL)
        return 0;
    for (uint32_t k = 0; k < p.caplen; k++)
        if (p.data[k] != byte_of(g, k))
            return 0;
    return 1;
}

/* ---- a batch read from several threads at once ---- */

struct reader {
    const pipc_batch *batch;
    uint64_t first;
    size_t good;
};

static void *read_batch(void *arg)
{
    struct reader *r = arg;
    for (int round = 0; round < 20; round++)
        for (size_t i = 0; i < pipc_batch_len(r->batch); i++)
            r->good += (size_t)packet_is(r->batch, i, r->first + i);
    return NULL;
}

/* ---- the checks ---- */

static void arguments_are_checked(void)
{
    pipc_producer *p = (pipc_producer *)&passed; /* must be overwritten with NULL */
    CHECK(pipc_producer_connect(NULL, &p) == PIPC_ERR_INVALID_ARGUMENT, "NULL server");
    CHECK(p == NULL, "*out is NULL after a failure");
    CHECK(strstr(pipc_last_error(), "server is NULL") != NULL, "detail: %s", pipc_last_error());
    CHECK(pipc_producer_connect("default", NULL) == PIPC_ERR_INVALID_ARGUMENT, "NULL out");
    pipc_subscriber *s = NULL;
    CHECK(pipc_subscriber_connect(NULL, &s) == PIPC_ERR_INVALID_ARGUMENT, "NULL server");
    CHECK(pipc_subscriber_connect("default", NULL) == PIPC_ERR_INVALID_ARGUMENT, "NULL out");
    pipc_packet pkt = {1, 0, 0, NULL};
    CHECK(pipc_producer_send(NULL, &pkt, 1) == PIPC_ERR_INVALID_ARGUMENT, "NULL producer");
    pipc_batch *b = NULL;
    CHECK(pipc_subscriber_recv(NULL, 0, &b) == PIPC_ERR_INVALID_ARGUMENT, "NULL subscriber");
    CHECK(b == NULL, "no batch");
    CHECK(pipc_batch_get(NULL, 0, &pkt) == PIPC_ERR_INVALID_ARGUMENT, "NULL batch");
    CHECK(pipc_batch_len(NULL) == 0 && pipc_batch_seq(NULL) == 0 && pipc_batch_lost(NULL) == 0,
          "getters of NULL");
    CHECK(pipc_batch_lost_packets(NULL) == 0 && pipc_batch_reassigned(NULL) == 0,
          "new getters of NULL");
    CHECK(pipc_producer_report_source_drops(NULL, 1) == PIPC_ERR_INVALID_ARGUMENT,
          "NULL producer");
    CHECK(pipc_subscriber_set_filter(NULL, "udp") == PIPC_ERR_INVALID_ARGUMENT,
          "NULL subscriber");
    CHECK(pipc_subscriber_set_filter(NULL, NULL) == PIPC_ERR_INVALID_ARGUMENT,
          "NULL subscriber, no filter");
    pipc_subscriber_opts opts = {NULL, NULL, PIPC_WAIT_PARK, -1};
    s = (pipc_subscriber *)&passed;
    CHECK(pipc_subscriber_connect_opts(NULL, &opts, &s) == PIPC_ERR_INVALID_ARGUMENT,
          "NULL server");
    CHECK(s == NULL, "*out is NULL after a failure");
    CHECK(pipc_subscriber_connect_opts("default", NULL, NULL) == PIPC_ERR_INVALID_ARGUMENT,
          "NULL out");
    opts.wait = 3;
    CHECK(pipc_subscriber_connect_opts("default", &opts, &s) == PIPC_ERR_INVALID_ARGUMENT,
          "wait 3");
    CHECK(strstr(pipc_last_error(), "opts->wait is 3") != NULL, "detail: %s", pipc_last_error());
    opts.wait = -1;
    CHECK(pipc_subscriber_connect_opts("default", &opts, &s) == PIPC_ERR_INVALID_ARGUMENT,
          "wait -1");
    CHECK(s == NULL, "no subscriber");
    pipc_producer_free(NULL);
    pipc_subscriber_free(NULL);
    pipc_batch_free(NULL);

    CHECK(PIPC_ERR_UNAVAILABLE < PIPC_ERR_INTERNAL, "the codes added come after");
    for (int code = PIPC_ERR_UNAVAILABLE; code <= PIPC_TIMEOUT; code++) {
        const char *text = pipc_strerror(code);
        CHECK(text != NULL && text[0] != '\0' && strcmp(text, "unknown status") != 0,
              "strerror(%d)", code);
    }
    CHECK(strcmp(pipc_strerror(12345), "unknown status") == 0, "unknown code");
}

static void unknown_server_is_named(void)
{
    pipc_subscriber *s = NULL;
    int rc = pipc_subscriber_connect("no-such-server", &s);
    CHECK(rc == PIPC_ERR_UNKNOWN_SERVER, "subscriber: %d %s", rc, pipc_strerror(rc));
    CHECK(s == NULL, "no subscriber");
    CHECK(strstr(pipc_last_error(), "no-such-server") != NULL, "detail: %s", pipc_last_error());
    pipc_producer *p = NULL;
    rc = pipc_producer_connect("no-such-server", &p);
    CHECK(rc == PIPC_ERR_UNKNOWN_SERVER, "producer: %d %s", rc, pipc_strerror(rc));
    CHECK(p == NULL, "no producer");
}

static void round_trip(const char *server)
{
    pipc_subscriber *s = NULL;
    int rc = pipc_subscriber_connect(server, &s);
    CHECK(rc == PIPC_OK, "subscribe to %s", server);
    pipc_producer *p = NULL;
    rc = pipc_producer_connect(server, &p);
    CHECK(rc == PIPC_OK, "produce to %s", server);
    if (s == NULL || p == NULL) {
        pipc_subscriber_free(s);
        pipc_producer_free(p);
        return;
    }

    pipc_batch *none = (pipc_batch *)&passed;
    CHECK(pipc_subscriber_recv(s, 0, &none) == PIPC_TIMEOUT, "nothing sent yet");
    CHECK(none == NULL, "no batch on a timeout");
    CHECK(pipc_subscriber_recv(s, 0, NULL) == PIPC_ERR_INVALID_ARGUMENT, "NULL out");

    /* Sends that are refused, or that send nothing. */
    CHECK(pipc_producer_send(p, NULL, 0) == PIPC_OK, "nothing to send");
    CHECK(pipc_producer_send(p, NULL, 3) == PIPC_ERR_INVALID_ARGUMENT, "NULL packets");
    uint8_t byte = 0;
    pipc_packet bad[2] = {{1, 1, 1, &byte}, {2, 5, 5, NULL}};
    CHECK(pipc_producer_send(p, bad, 2) == PIPC_ERR_INVALID_ARGUMENT, "data NULL, caplen 5");
    CHECK(strstr(pipc_last_error(), "packets[1]") != NULL, "detail: %s", pipc_last_error());
    /* 300 packets of 60000 bytes: over the default max-batch-bytes (16 MiB). */
    uint8_t *chunk = calloc(60000, 1);
    pipc_packet *many = calloc(300, sizeof *many);
    for (int i = 0; i < 300; i++) {
        many[i].ts_nanos = 3;
        many[i].caplen = many[i].origlen = 60000;
        many[i].data = chunk;
    }
    rc = pipc_producer_send(p, many, 300);
    CHECK(rc == PIPC_ERR_BATCH_TOO_LARGE, "18 MB batch: %d", rc);
    CHECK(strstr(pipc_last_error(), "max-batch-bytes") != NULL, "detail: %s", pipc_last_error());
    free(many);
    free(chunk);

    /* The packets. */
    uint8_t *buf = malloc(100 * (size_t)JUMBO);
    pipc_packet packets[100];
    uint64_t g = 0;
    for (int b = 0; b < BATCHES; b++) {
        size_t n = batch_size(b);
        for (size_t i = 0; i < n; i++)
            make_packet(g + i, buf + i * JUMBO, &packets[i]);
        rc = pipc_producer_send(p, packets, n);
        CHECK(rc == PIPC_OK, "send batch %d", b);
        /* The library kept nothing of the buffer: scribbling on it changes nothing sent. */
        memset(buf, 0xEE, n * JUMBO);
        g += n;
    }
    free(buf);
    /* A packet longer than the server's snaplen (65535 by default) is cut to it, its
     * original length kept, as a capture with that snaplen would have it. */
    uint8_t *long_frame = malloc(LONG_FRAME);
    for (uint32_t k = 0; k < LONG_FRAME; k++)
        long_frame[k] = (uint8_t)(k * 13);
    pipc_packet cut = {42, LONG_FRAME, LONG_FRAME, long_frame};
    CHECK(pipc_producer_send(p, &cut, 1) == PIPC_OK, "send the long packet");
    free(long_frame);
    pipc_producer_free(p);
    uint64_t total = g;

    /* Receive and check everything. */
    uint64_t got = 0, prev_seq = 0;
    pipc_batch *kept = NULL;
    uint64_t kept_first = 0;
    for (int b = 0; b < BATCHES; b++) {
        pipc_batch *batch = NULL;
        rc = pipc_subscriber_recv(s, 10000, &batch);
        CHECK(rc == PIPC_OK, "batch %d: %s", b, pipc_strerror(rc));
        if (rc != PIPC_OK)
            break;
        size_t n = pipc_batch_len(batch);
        CHECK(n == batch_size(b), "batch %d has %zu packets", b, n);
        CHECK(pipc_batch_lost(batch) == 0, "nothing lost before batch %d", b);
        uint64_t seq = pipc_batch_seq(batch);
        CHECK(b == 0 || seq == prev_seq + 1, "seq %llu after %llu", (unsigned long long)seq,
              (unsigned long long)prev_seq);
        prev_seq = seq;
        size_t good = 0;
        for (size_t i = 0; i < n; i++)
            good += (size_t)packet_is(batch, i, got + i);
        CHECK(good == n, "batch %d: %zu of %zu packets intact", b, good, n);
        pipc_packet out = {7, 7, 7, NULL};
        CHECK(pipc_batch_get(batch, n, &out) == PIPC_ERR_OUT_OF_RANGE, "index n");
        CHECK(out.ts_nanos == 7 && out.data == NULL, "*out untouched on an error");
        CHECK(pipc_batch_get(batch, 0, NULL) == PIPC_ERR_INVALID_ARGUMENT, "NULL out");

        if (b == 5) {
            struct reader r[3] = {{batch, got, 0}, {batch, got, 0}, {batch, got, 0}};
            pthread_t t[3];
            for (int k = 0; k < 3; k++)
                pthread_create(&t[k], NULL, read_batch, &r[k]);
            for (int k = 0; k < 3; k++) {
                pthread_join(t[k], NULL);
                CHECK(r[k].good == 20 * n, "thread %d read %zu of %zu", k, r[k].good, 20 * n);
            }
        }
        if (b == BATCHES - 1) {
            kept = batch;
            kept_first = got;
        } else {
            pipc_batch_free(batch);
        }
        got += n;
    }
    CHECK(got == total, "received %llu of %llu packets", (unsigned long long)got,
          (unsigned long long)total);
    pipc_batch *last = NULL;
    rc = pipc_subscriber_recv(s, 10000, &last);
    CHECK(rc == PIPC_OK && pipc_batch_len(last) == 1, "the long packet: %s", pipc_strerror(rc));
    if (rc == PIPC_OK) {
        pipc_packet p1;
        CHECK(pipc_batch_get(last, 0, &p1) == PIPC_OK, "get the long packet");
        CHECK(p1.ts_nanos == 42 && p1.caplen == SNAPLEN && p1.origlen == LONG_FRAME,
              "cut to %u of %u", p1.caplen, p1.origlen);
        int same = 1;
        for (uint32_t k = 0; k < p1.caplen && k < SNAPLEN; k++)
            same &= p1.data[k] == (uint8_t)(k * 13);
        CHECK(same, "the long packet's first %u bytes", SNAPLEN);
        pipc_batch_free(last);
    }
    pipc_batch *extra = NULL;
    CHECK(pipc_subscriber_recv(s, 200, &extra) == PIPC_TIMEOUT, "nothing more");

    /* A batch outlives its subscriber. */
    pipc_subscriber_free(s);
    if (kept != NULL) {
        size_t good = 0, n = pipc_batch_len(kept);
        for (size_t i = 0; i < n; i++)
            good += (size_t)packet_is(kept, i, kept_first + i);
        CHECK(n > 0 && good == n, "kept batch: %zu of %zu intact", good, n);
        pipc_batch_free(kept);
    }
}

/* ---- frames with flows, for filters and groups ---- */

#define FRAME_MAX 64
#define PROTO_TCP 6
#define PROTO_UDP 17

/* Writes an Ethernet frame of IPv4 into buf: UDP or TCP, flow `flow` (its source address
 * and port), carrying `id` in its last two bytes; returns its length. */
static uint32_t make_frame(uint8_t *buf, int proto, unsigned flow, uint16_t id)
{
    static const uint8_t eth[14] = {2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00};
    uint32_t l4 = proto == PROTO_UDP ? 8 : 20;
    uint32_t len = 14 + 20 + l4 + 2;
    memset(buf, 0, len);
    memcpy(buf, eth, sizeof eth);
    uint8_t *ip = buf + 14;
    ip[0] = 0x45;
    ip[2] = (uint8_t)((len - 14) >> 8);
    ip[3] = (uint8_t)(len - 14);
    ip[8] = 64;
    ip[9] = (uint8_t)proto;
    ip[12] = 10, ip[13] = 1, ip[14] = (uint8_t)(flow >> 8), ip[15] = (uint8_t)flow;
    ip[16] = 10, ip[17] = 2, ip[18] = 0, ip[19] = 1;
    uint8_t *l = ip + 20;
    l[0] = (uint8_t)((1024 + flow) >> 8);
    l[1] = (uint8_t)(1024 + flow);
    l[2] = 0;
    l[3] = proto == PROTO_UDP ? 53 : 80;
    if (proto == PROTO_UDP) {
        l[5] = 8 + 2;
    } else {
        l[7] = 1;     /* sequence number */
        l[12] = 0x50; /* header length: 5 words */
        l[13] = 0x18; /* PSH ACK */
        l[14] = 0xff, l[15] = 0xff;
    }
    buf[len - 2] = (uint8_t)(id >> 8);
    buf[len - 1] = (uint8_t)id;
    return len;
}

/* The id a frame of make_frame carries. */
static uint16_t id_of(const pipc_packet *p)
{
    if (p->caplen < 2)
        return UINT16_MAX;
    return (uint16_t)(p->data[p->caplen - 2] << 8 | p->data[p->caplen - 1]);
}

/* Sends frames first_id .. first_id + n - 1 as one batch: frame k on flow k % flows, UDP
 * when is_udp(k), else TCP. */
static int send_frames(pipc_producer *p, uint16_t first_id, size_t n, unsigned flows,
                       int (*is_udp)(unsigned))
{
    static uint8_t bufs[256][FRAME_MAX];
    pipc_packet pkts[256];
    if (n > 256)
        return PIPC_ERR_INVALID_ARGUMENT;
    for (size_t k = 0; k < n; k++) {
        unsigned id = first_id + (unsigned)k;
        pkts[k].ts_nanos = 1000u + id;
        pkts[k].caplen = pkts[k].origlen =
            make_frame(bufs[k], is_udp(id) ? PROTO_UDP : PROTO_TCP, id % flows, (uint16_t)id);
        pkts[k].data = bufs[k];
    }
    return pipc_producer_send(p, pkts, n);
}

static int even_is_udp(unsigned id) { return id % 2 == 0; }
static int all_udp(unsigned id) { return (void)id, 1; }

/* Receives one batch into ids (at most max); returns how many, or -1. */
static int recv_ids(pipc_subscriber *s, int timeout_ms, uint16_t *ids, size_t max,
                    int *reassigned)
{
    pipc_batch *b = NULL;
    int rc = pipc_subscriber_recv(s, timeout_ms, &b);
    if (rc != PIPC_OK)
        return rc == PIPC_TIMEOUT ? 0 : -1;
    size_t n = pipc_batch_len(b);
    if (reassigned != NULL)
        *reassigned = pipc_batch_reassigned(b);
    for (size_t i = 0; i < n && i < max; i++) {
        pipc_packet p;
        if (pipc_batch_get(b, i, &p) != PIPC_OK) {
            pipc_batch_free(b);
            return -1;
        }
        ids[i] = id_of(&p);
    }
    pipc_batch_free(b);
    return (int)(n < max ? n : max);
}

/* 1 if ids[0..n) are first, first + step, first + 2 step... (count of them). */
static int ids_are(const uint16_t *ids, int n, unsigned first, unsigned step, int count)
{
    if (n != count)
        return 0;
    for (int i = 0; i < n; i++)
        if (ids[i] != first + (unsigned)i * step)
            return 0;
    return 1;
}

static void filters(const char *server)
{
    /* A filter libpcap rejects: libpcap's message, no subscriber. */
    pipc_subscriber_opts opts = {NULL, "udp and and", PIPC_WAIT_ADAPTIVE, 0};
    pipc_subscriber *s = (pipc_subscriber *)&passed;
    int rc = pipc_subscriber_connect_opts(server, &opts, &s);
    CHECK(rc == PIPC_ERR_INVALID_ARGUMENT, "bad filter: %d %s", rc, pipc_strerror(rc));
    CHECK(s == NULL, "no subscriber");
    CHECK(strstr(pipc_last_error(), "udp and and") != NULL
              && strstr(pipc_last_error(), "syntax error") != NULL,
          "libpcap's message: %s", pipc_last_error());

    opts.filter = "udp";
    rc = pipc_subscriber_connect_opts(server, &opts, &s);
    CHECK(rc == PIPC_OK, "subscribe with filter udp");
    pipc_producer *p = NULL;
    CHECK(pipc_producer_connect(server, &p) == PIPC_OK, "produce");
    if (s == NULL || p == NULL) {
        pipc_subscriber_free(s);
        pipc_producer_free(p);
        return;
    }
    uint16_t ids[256];
    int n;

    /* 40 frames, even ids UDP, odd ones TCP: the 20 UDP ones arrive. */
    CHECK(send_frames(p, 0, 40, 8, even_is_udp) == PIPC_OK, "send");
    n = recv_ids(s, 10000, ids, 256, NULL);
    CHECK(ids_are(ids, n, 0, 2, 20), "UDP only: %d packets", n);

    /* Mid-stream: TCP only, then a bad expression changes nothing, then no filter. */
    CHECK(pipc_subscriber_set_filter(s, "tcp") == PIPC_OK, "set tcp");
    CHECK(send_frames(p, 100, 40, 8, even_is_udp) == PIPC_OK, "send");
    n = recv_ids(s, 10000, ids, 256, NULL);
    CHECK(ids_are(ids, n, 101, 2, 20), "TCP only: %d packets", n);
    rc = pipc_subscriber_set_filter(s, "tcp port");
    CHECK(rc == PIPC_ERR_INVALID_ARGUMENT, "bad filter: %d", rc);
    CHECK(strstr(pipc_last_error(), "tcp port") != NULL, "detail: %s", pipc_last_error());
    /* A batch of UDP only has nothing for this subscriber: it is not given at all. */
    CHECK(send_frames(p, 300, 10, 8, all_udp) == PIPC_OK, "send");
    CHECK(send_frames(p, 200, 40, 8, even_is_udp) == PIPC_OK, "send");
    n = recv_ids(s, 10000, ids, 256, NULL);
    CHECK(ids_are(ids, n, 201, 2, 20), "still TCP only: %d packets", n);
    CHECK(pipc_subscriber_set_filter(s, NULL) == PIPC_OK, "no filter");
    CHECK(send_frames(p, 400, 40, 8, even_is_udp) == PIPC_OK, "send");
    n = recv_ids(s, 10000, ids, 256, NULL);
    CHECK(ids_are(ids, n, 400, 1, 40), "everything: %d packets", n);
    pipc_batch *none = NULL;
    CHECK(pipc_subscriber_recv(s, 200, &none) == PIPC_TIMEOUT, "nothing more");

    pipc_producer_free(p);
    pipc_subscriber_free(s);
}

#define GROUP_FLOWS 32
#define GROUP_BATCHES 4
#define GROUP_BATCH 64
#define SOURCE_DROPS 1234u /* checked by ../tests/c_programs.rs in the daemon's stats */

static void sleep_ms(long ms)
{
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
}

static void groups(const char *server)
{
    pipc_subscriber_opts opts = {"capi-test", NULL, PIPC_WAIT_PARK, -1};
    pipc_subscriber *a = NULL, *b = NULL;
    pipc_producer *p = NULL;
    CHECK(pipc_subscriber_connect_opts(server, &opts, &a) == PIPC_OK, "member a joins");
    CHECK(pipc_producer_connect(server, &p) == PIPC_OK, "produce");
    if (a == NULL || p == NULL) {
        pipc_subscriber_free(a);
        pipc_producer_free(p);
        return;
    }
    /* A running total: the last one counts. */
    CHECK(pipc_producer_report_source_drops(p, 100) == PIPC_OK, "report drops");
    CHECK(pipc_producer_report_source_drops(p, SOURCE_DROPS) == PIPC_OK, "report drops");

    /* Alone in the group: a gets everything, nothing reassigned. */
    uint16_t ids[256];
    int reassigned = -1;
    CHECK(send_frames(p, 0, GROUP_FLOWS, GROUP_FLOWS, all_udp) == PIPC_OK, "send");
    int n = recv_ids(a, 10000, ids, 256, &reassigned);
    CHECK(ids_are(ids, n, 0, 1, GROUP_FLOWS), "a alone: %d packets", n);
    CHECK(reassigned == 0, "nothing reassigned yet");

    /* b joins: the flows are spread over both, each packet to one member, each flow to
     * one member; a sees its flows reassigned. */
    CHECK(pipc_subscriber_connect_opts(server, &opts, &b) == PIPC_OK, "member b joins");
    if (b == NULL) {
        pipc_subscriber_free(a);
        pipc_producer_free(p);
        return;
    }
    unsigned total = GROUP_BATCHES * GROUP_BATCH;
    for (unsigned k = 0; k < GROUP_BATCHES; k++)
        CHECK(send_frames(p, (uint16_t)(1000 + k * GROUP_BATCH), GROUP_BATCH, GROUP_FLOWS,
                          all_udp) == PIPC_OK,
              "send %u", k);
    int seen[GROUP_BATCHES * GROUP_BATCH] = {0};
    int owner[GROUP_FLOWS];
    for (int f = 0; f < GROUP_FLOWS; f++)
        owner[f] = -1;
    unsigned got[2] = {0, 0}, batches[2] = {0, 0}, flow_moved = 0, bad = 0;
    int first_reassigned[2] = {-1, -1};
    pipc_subscriber *members[2] = {a, b};
    for (int idle = 0; got[0] + got[1] < total && idle < 100;) {
        int any = 0;
        for (int m = 0; m < 2; m++) {
            n = recv_ids(members[m], 100, ids, 256, &reassigned);
            if (n < 0) {
                bad++;
                continue;
            }
            if (n == 0)
                continue;
            any = 1;
            if (batches[m]++ == 0)
                first_reassigned[m] = reassigned;
            for (int i = 0; i < n; i++) {
                unsigned id = ids[i];
                if (id < 1000 || id >= 1000 + total) {
                    bad++;
                    continue;
                }
                seen[id - 1000]++;
                unsigned flow = id % GROUP_FLOWS;
                if (owner[flow] == -1)
                    owner[flow] = m;
                else if (owner[flow] != m)
                    flow_moved++;
            }
            got[m] += (unsigned)n;
        }
        idle = any ? 0 : idle + 1;
    }
    unsigned once = 0;
    for (unsigned i = 0; i < total; i++)
        once += seen[i] == 1;
    CHECK(bad == 0, "%u bad packets or receive errors", bad);
    CHECK(once == total && got[0] + got[1] == total, "every packet once: %u of %u (a %u, b %u)",
          once, total, got[0], got[1]);
    CHECK(got[0] > 0 && got[1] > 0, "both members got packets: a %u, b %u", got[0], got[1]);
    CHECK(flow_moved == 0, "%u packets of a flow went to the other member", flow_moved);
    CHECK(first_reassigned[0] == 1, "a's next batch says reassigned: %d", first_reassigned[0]);
    CHECK(first_reassigned[1] == 0, "b's first batch does not: %d", first_reassigned[1]);

    /* The daemon reads the drops about every 100 ms: give it time before leaving. */
    sleep_ms(300);
    pipc_producer_free(p);
    pipc_subscriber_free(a);
    pipc_subscriber_free(b);
}

int main(int argc, char **argv)
{
    const char *server = argc > 1 ? argv[1] : "default";
    arguments_are_checked();
    unknown_server_is_named();
    round_trip(server);
    filters(server);
    groups(server);
    printf("api_test: %d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
