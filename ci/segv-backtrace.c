/* A native backtrace when a process dies of SIGSEGV/SIGBUS/SIGILL/SIGFPE/SIGABRT, for machines without
 * gdb. Load it with LD_PRELOAD (it installs itself at load); after Python's faulthandler.enable(), call
 * segv_backtrace_install() (ctypes) to run first again and hand over to faulthandler afterwards.
 *
 * Each frame is printed as "#i ADDRESS OBJECT+0xOFFSET SYMBOL" on stderr: OBJECT+OFFSET is what
 * addr2line -f -C -e OBJECT OFFSET resolves (static functions have no dynamic symbol).
 *
 *   gcc -shared -fPIC -O1 -o segv-backtrace.so ci/segv-backtrace.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <execinfo.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <ucontext.h>
#include <unistd.h>

static const int kSignals[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT};
static struct sigaction previous[NSIG];
static char alt_stack[1 << 16];  /* a stack overflow must not take the handler with it */

static void print_frame(const char *tag, void *addr) {
    Dl_info info;
    if (dladdr(addr, &info) && info.dli_fname) {
        dprintf(2, "[segv-backtrace] %s %p %s+0x%lx %s\n", tag, addr, info.dli_fname,
                (unsigned long)((char *)addr - (char *)info.dli_fbase), info.dli_sname ? info.dli_sname : "?");
    } else {
        dprintf(2, "[segv-backtrace] %s %p ?\n", tag, addr);
    }
}

static void on_fatal_signal(int sig, siginfo_t *si, void *ctx) {
    static volatile sig_atomic_t reported = 0;
    void *frames[96];
    char tag[16];
    if (reported) {  /* back again through faulthandler's raise(): die the default way */
        signal(sig, SIG_DFL);
        raise(sig);
        return;
    }
    reported = 1;
    dprintf(2, "\n[segv-backtrace] signal %d (%s) code %d fault address %p pid %d\n", sig, strsignal(sig),
            si->si_code, si->si_addr, (int)getpid());
#if defined(__x86_64__)
    const ucontext_t *uc = (const ucontext_t *)ctx;
    print_frame("pc", (void *)uc->uc_mcontext.gregs[REG_RIP]);
    dprintf(2, "[segv-backtrace] sp %p\n", (void *)uc->uc_mcontext.gregs[REG_RSP]);
#else
    (void)ctx;
#endif
    int n = backtrace(frames, 96);
    for (int i = 0; i < n; i++) {
        snprintf(tag, sizeof tag, "#%d", i);
        print_frame(tag, frames[i]);
    }
    dprintf(2, "[segv-backtrace] end (%d frames)\n", n);
    /* Hand over to whoever was there before (faulthandler, or the default action): a hardware fault
     * re-executes the faulting instruction on return and traps into it; a raised signal is raised again.
     * faulthandler then restores this handler and raises once more, which ends above. */
    sigaction(sig, &previous[sig], NULL);
    if (si->si_code <= 0)
        raise(sig);
}

void segv_backtrace_install(void) {
    stack_t ss = {.ss_sp = alt_stack, .ss_size = sizeof alt_stack, .ss_flags = 0};
    sigaltstack(&ss, NULL);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fatal_signal;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    for (unsigned i = 0; i < sizeof kSignals / sizeof kSignals[0]; i++)
        sigaction(kSignals[i], &sa, &previous[kSignals[i]]);
}

__attribute__((constructor)) static void segv_backtrace_load(void) {
    void *warm[1];
    backtrace(warm, 1);              /* loads libgcc_s now, not inside the handler */
    setvbuf(stdout, NULL, _IONBF, 0);  /* DeepGEMM's printf progress must reach the log before a crash */
    segv_backtrace_install();
}
