/*
 * subscriber.c - receive packets from a server of packet-ipcd and write them to a pcap.
 *
 *   cc -Wall -Wextra -Werror subscriber.c -o subscriber \
 *      $(pkg-config --cflags --libs packet_ipc) -lpcap
 *   ./subscriber [SERVER [COUNT [OUT.pcap [FILTER]]]]   (default: default 1000 out.pcap)
 *
 * Prints "subscribed to SERVER" on stderr once it will receive the next batch sent, then a
 * line per batch, and stops after COUNT packets (cutting the last batch if needed), at the
 * end of the stream, or after 30 seconds without a batch. The packets are read in place
 * (pipc_batch_get copies nothing) and written with libpcap: open the file with
 * `tshark -r OUT.pcap` or `tcpdump -r OUT.pcap`. With FILTER, a tcpdump expression such as
 * "udp" or "tcp port 443", only the packets that match are received.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <pcap/pcap.h>

#include <packet_ipc.h>

#define IDLE_LIMIT_MS 30000
#define WAIT_MS 500

int main(int argc, char **argv)
{
    const char *server = argc > 1 ? argv[1] : "default";
    uint64_t count = argc > 2 ? strtoull(argv[2], NULL, 10) : 1000;
    const char *path = argc > 3 ? argv[3] : "out.pcap";
    const char *filter = argc > 4 ? argv[4] : NULL;

    /* A pcap of Ethernet frames (the server's link type by default), microsecond
     * timestamps, the classic format every tool reads. */
    pcap_t *dead = pcap_open_dead(DLT_EN10MB, 65535);
    if (dead == NULL) {
        fprintf(stderr, "subscriber: pcap_open_dead failed\n");
        return 1;
    }
    pcap_dumper_t *dumper = pcap_dump_open(dead, path);
    if (dumper == NULL) {
        fprintf(stderr, "subscriber: cannot write %s: %s\n", path, pcap_geterr(dead));
        pcap_close(dead);
        return 1;
    }

    pipc_subscriber *s = NULL;
    int rc = pipc_subscriber_connect(server, &s);
    if (rc != PIPC_OK) {
        fprintf(stderr, "subscriber: cannot subscribe to %s: %s (%s)\n", server,
                pipc_strerror(rc), pipc_last_error());
        pcap_dump_close(dumper);
        pcap_close(dead);
        return 1;
    }
    /* Also possible at connection time: pipc_subscriber_connect_opts with opts.filter. */
    if (filter != NULL && (rc = pipc_subscriber_set_filter(s, filter)) != PIPC_OK) {
        fprintf(stderr, "subscriber: bad filter: %s (%s)\n", pipc_strerror(rc),
                pipc_last_error());
        pipc_subscriber_free(s);
        pcap_dump_close(dumper);
        pcap_close(dead);
        return 1;
    }
    fprintf(stderr, "subscribed to %s\n", server);

    uint64_t packets = 0, bytes = 0, lost = 0;
    int idle_ms = 0, status = 0;
    while (packets < count) {
        pipc_batch *b = NULL;
        rc = pipc_subscriber_recv(s, WAIT_MS, &b);
        if (rc == PIPC_TIMEOUT) {
            idle_ms += WAIT_MS;
            if (idle_ms >= IDLE_LIMIT_MS) {
                fprintf(stderr, "subscriber: no batch for %d s, giving up\n", idle_ms / 1000);
                status = 1;
                break;
            }
            continue;
        }
        if (rc == PIPC_END) {
            fprintf(stderr, "subscriber: end of stream (server %s is gone)\n", server);
            break;
        }
        if (rc != PIPC_OK) {
            fprintf(stderr, "subscriber: receive failed: %s (%s)\n", pipc_strerror(rc),
                    pipc_last_error());
            status = 1;
            break;
        }
        idle_ms = 0;

        size_t n = pipc_batch_len(b);
        uint64_t batch_bytes = 0;
        lost += pipc_batch_lost(b);
        for (size_t i = 0; i < n && packets < count; i++) {
            pipc_packet pkt;
            if (pipc_batch_get(b, i, &pkt) != PIPC_OK) {
                fprintf(stderr, "subscriber: %s\n", pipc_last_error());
                status = 1;
                break;
            }
            /* pipc_packet -> pcap_pkthdr: seconds and microseconds from nanoseconds,
             * captured length, and the original length on the wire. */
            struct pcap_pkthdr hdr;
            hdr.ts.tv_sec = (time_t)(pkt.ts_nanos / 1000000000u);
            hdr.ts.tv_usec = (suseconds_t)((pkt.ts_nanos % 1000000000u) / 1000u);
            hdr.caplen = pkt.caplen;
            hdr.len = pkt.origlen;
            /* pkt.data points into the batch's shared memory: no copy before this. */
            pcap_dump((u_char *)dumper, &hdr, pkt.data);
            packets++;
            batch_bytes += pkt.caplen;
        }
        bytes += batch_bytes;
        printf("batch seq=%llu packets=%zu lost=%llu bytes=%llu\n",
               (unsigned long long)pipc_batch_seq(b), n,
               (unsigned long long)pipc_batch_lost(b), (unsigned long long)batch_bytes);
        /* Gives the shared memory back to the producer. */
        pipc_batch_free(b);
        if (status != 0)
            break;
    }

    pipc_subscriber_free(s);
    pcap_dump_close(dumper);
    pcap_close(dead);
    printf("received %llu packets (%llu bytes), %llu batches lost, written to %s\n",
           (unsigned long long)packets, (unsigned long long)bytes, (unsigned long long)lost,
           path);
    return status;
}
