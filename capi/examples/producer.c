/*
 * producer.c - publish generated packets to a server of packet-ipcd.
 *
 *   cc -Wall -Wextra -Werror producer.c -o producer $(pkg-config --cflags --libs packet_ipc)
 *   ./producer [SERVER [COUNT [BATCH]]]        (default: default 1000 64)
 *
 * Sends COUNT Ethernet frames, BATCH per batch. Packet i is deterministic, so a reader can
 * check what it got (the tests do):
 *   ts_nanos = 1700000000123456789 + i * 1000001
 *   caplen   = 14 + (i * 37) % 1500
 *   origlen  = caplen + 100 when i % 5 == 0 (cut short by a snaplen), else caplen
 *   bytes    = dst 02:00:00:00:00:01, src 02:00:00:00:00:02, ethertype 0x88b5 (local
 *              experimental), then byte k (k >= 14) = (uint8_t)(i * 31 + k)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <packet_ipc.h>

#define MAX_FRAME 1514

static void make_packet(uint64_t i, uint8_t *buf, pipc_packet *pkt)
{
    static const uint8_t eth[14] = {0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02, 0x88, 0xb5};
    uint32_t caplen = 14 + (uint32_t)((i * 37) % 1500);
    memcpy(buf, eth, sizeof eth);
    for (uint32_t k = 14; k < caplen; k++)
        buf[k] = (uint8_t)(i * 31 + k);
    pkt->ts_nanos = 1700000000123456789ULL + i * 1000001ULL;
    pkt->caplen = caplen;
    pkt->origlen = caplen + (i % 5 == 0 ? 100 : 0);
    pkt->data = buf;
}

int main(int argc, char **argv)
{
    const char *server = argc > 1 ? argv[1] : "default";
    uint64_t count = argc > 2 ? strtoull(argv[2], NULL, 10) : 1000;
    size_t batch = argc > 3 ? (size_t)strtoull(argv[3], NULL, 10) : 64;
    if (batch == 0) {
        fprintf(stderr, "producer: BATCH must be at least 1\n");
        return 2;
    }

    pipc_producer *p = NULL;
    int rc = pipc_producer_connect(server, &p);
    if (rc != PIPC_OK) {
        fprintf(stderr, "producer: cannot connect to %s: %s (%s)\n", server, pipc_strerror(rc),
                pipc_last_error());
        return 1;
    }

    /* The packets' bytes stay in this buffer: pipc_producer_send writes them once, into
     * the batch in shared memory, and keeps nothing, so the buffer is reused at once. */
    uint8_t *frames = malloc(batch * MAX_FRAME);
    pipc_packet *packets = malloc(batch * sizeof *packets);
    if (frames == NULL || packets == NULL) {
        fprintf(stderr, "producer: out of memory\n");
        free(frames);
        free(packets);
        pipc_producer_free(p);
        return 1;
    }

    uint64_t sent = 0, batches = 0, bytes = 0;
    int status = 0;
    while (sent < count) {
        size_t n = 0;
        for (; n < batch && sent + n < count; n++) {
            make_packet(sent + n, frames + n * MAX_FRAME, &packets[n]);
            bytes += packets[n].caplen;
        }
        rc = pipc_producer_send(p, packets, n);
        if (rc != PIPC_OK) {
            fprintf(stderr, "producer: send failed: %s (%s)\n", pipc_strerror(rc),
                    pipc_last_error());
            status = 1;
            break;
        }
        sent += n;
        batches++;
    }

    /* Every batch accepted by pipc_producer_send is delivered after this. */
    pipc_producer_free(p);
    free(frames);
    free(packets);
    printf("sent %llu packets (%llu bytes) in %llu batches to %s\n", (unsigned long long)sent,
           (unsigned long long)bytes, (unsigned long long)batches, server);
    return status;
}
