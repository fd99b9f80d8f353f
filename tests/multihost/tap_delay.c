/* A user-space delay line for kernels without netem (launch/netns_hosts.sh delay --userspace).
 * For each host it owns two TAP devices: frames the host sends (redirected by tc from its
 * root-side veth end to the "in" TAP) come out of the "out" TAP, on the bridge, DELAY_US
 * later; frames the bridge sends to the "out" TAP go back through the "in" TAP (and tc) to
 * the host at once. Like netem on each host's egress: one delay per hop between two hosts.
 *   tap_delay DELAY_US IN1 OUT1 [IN2 OUT2 ...]     runs until SIGTERM/SIGINT
 * Prints "tap_delay: ready" once every TAP exists. Frames beyond the queue are dropped. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

enum { kMaxPairs = 9, kFrameBytes = 2048, kQueueFrames = 8192 };

struct Frame {
  long long release_ns;
  int out_fd;
  int len;
  unsigned char data[kFrameBytes];
};

static volatile sig_atomic_t g_stop = 0;
static void on_signal(int sig) { (void)sig; g_stop = 1; }

static long long now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int open_tap(const char* name) {
  int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    fprintf(stderr, "tap_delay: open /dev/net/tun: %s\n", strerror(errno));
    exit(1);
  }
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
  if (strlen(name) >= IFNAMSIZ) {
    fprintf(stderr, "tap_delay: interface name too long: %s\n", name);
    exit(1);
  }
  strcpy(ifr.ifr_name, name);
  if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
    fprintf(stderr, "tap_delay: TUNSETIFF %s: %s\n", name, strerror(errno));
    exit(1);
  }
  return fd;
}

int main(int argc, char** argv) {
  if (argc < 4 || (argc - 2) % 2 != 0 || (argc - 2) / 2 > kMaxPairs) {
    fprintf(stderr, "usage: tap_delay DELAY_US IN1 OUT1 [IN2 OUT2 ...] (at most %d pairs)\n", kMaxPairs);
    return 2;
  }
  const long long delay_ns = atoll(argv[1]) * 1000LL;
  const int pairs = (argc - 2) / 2;
  int in_fd[kMaxPairs];
  int out_fd[kMaxPairs];
  for (int i = 0; i < pairs; ++i) {
    in_fd[i] = open_tap(argv[2 + 2 * i]);
    out_fd[i] = open_tap(argv[3 + 2 * i]);
  }
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);

  /* With a constant delay, release times are in arrival order: one FIFO ring suffices. */
  struct Frame* queue = calloc(kQueueFrames, sizeof *queue);
  if (!queue) return 1;
  size_t head = 0, count = 0;
  unsigned long long dropped = 0;
  printf("tap_delay: ready, %d pairs, %lld us\n", pairs, delay_ns / 1000);
  fflush(stdout);

  struct pollfd fds[2 * kMaxPairs];
  for (int i = 0; i < pairs; ++i) {
    fds[2 * i] = (struct pollfd){.fd = in_fd[i], .events = POLLIN};
    fds[2 * i + 1] = (struct pollfd){.fd = out_fd[i], .events = POLLIN};
  }
  unsigned char scratch[kFrameBytes];
  while (!g_stop) {
    /* Release what is due. */
    long long t = now_ns();
    while (count > 0 && queue[head].release_ns <= t) {
      struct Frame* f = &queue[head];
      if (write(f->out_fd, f->data, (size_t)f->len) < 0 && errno != EAGAIN) dropped++;
      head = (head + 1) % kQueueFrames;
      count--;
    }
    struct timespec timeout = {.tv_sec = 1, .tv_nsec = 0};
    if (count > 0) {
      long long wait = queue[head].release_ns - t;
      timeout.tv_sec = wait / 1000000000LL;
      timeout.tv_nsec = wait % 1000000000LL;
    }
    int n = ppoll(fds, (nfds_t)(2 * pairs), &timeout, NULL);
    if (n < 0) {
      if (errno == EINTR) continue;
      perror("tap_delay: ppoll");
      return 1;
    }
    for (int i = 0; i < pairs; ++i) {
      /* Host -> bridge: delayed. */
      while (fds[2 * i].revents & POLLIN) {
        if (count == kQueueFrames) {
          if (read(in_fd[i], scratch, sizeof scratch) < 0) break;
          dropped++;
          continue;
        }
        struct Frame* f = &queue[(head + count) % kQueueFrames];
        ssize_t len = read(in_fd[i], f->data, sizeof f->data);
        if (len <= 0) break;
        f->len = (int)len;
        f->out_fd = out_fd[i];
        f->release_ns = now_ns() + delay_ns;
        count++;
      }
      /* Bridge -> host: at once. */
      while (fds[2 * i + 1].revents & POLLIN) {
        ssize_t len = read(out_fd[i], scratch, sizeof scratch);
        if (len <= 0) break;
        if (write(in_fd[i], scratch, (size_t)len) < 0 && errno != EAGAIN) dropped++;
      }
    }
  }
  fprintf(stderr, "tap_delay: stopped (%llu frames dropped)\n", dropped);
  free(queue);
  return 0;
}
