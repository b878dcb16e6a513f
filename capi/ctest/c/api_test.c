/*
 * api_test.c - the C API from C, against a running packet-ipcd on its default
 * configuration (run by ../tests/c_programs.rs, under valgrind and linked statically).
 *
 *   api_test [SERVER]
 *
 * Checks the argument checks and error reporting, then sends packets with every kind of
 * edge (empty, jumbo, cut short, origlen below caplen, timestamps 0 and UINT64_MAX) through
 * the daemon to a subscriber in the same process and checks that every byte, length and
 * timestamp arrived (and that a packet over the server's snaplen is cut to it), reading one batch from several threads at once and one batch after
 * its subscriber was freed. Prints "N passed, N failed" and exits non-zero on a failure.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    pipc_producer_free(NULL);
    pipc_subscriber_free(NULL);
    pipc_batch_free(NULL);

    for (int code = PIPC_ERR_INTERNAL; code <= PIPC_TIMEOUT; code++) {
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

int main(int argc, char **argv)
{
    const char *server = argc > 1 ? argv[1] : "default";
    arguments_are_checked();
    unknown_server_is_named();
    round_trip(server);
    printf("api_test: %d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
