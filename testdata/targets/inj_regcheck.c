/*
 * Checks its own registers while a tracer injects system calls into it.
 *
 * regloop loads fixed patterns into every general register it does not
 * need (rax, rbx, rcx, rdx, rbp, r8-r15) and into ymm0-ymm14, then counts
 * in a loop that compares all of them with the patterns on every turn.
 * Between loops the program checks its signal mask and sleeps 200 us in
 * nanosleep, which must return 0, so injections also land inside a system
 * call that the kernel restarts.
 *
 * Output: "count N" about every 20 ms. On a mismatch it prints
 * "corrupt WHAT" and exits with status 3.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Patterns for rax, rbx, rcx, rdx, rbp, r8-r15 (13 values), then ymm0-14. */
uint64_t gpr_pattern[13];
uint64_t ymm_pattern[15][4] __attribute__((aligned(32)));
volatile uint64_t counter;

/*
 * uint64_t regloop(uint64_t turns, volatile uint64_t *counter)
 * Returns 0 after turns loops, else 1 + the index of the first register
 * that lost its pattern (0-12 general registers, 13-27 ymm0-ymm14).
 */
__asm__(
	".text\n"
	".globl regloop\n"
	"regloop:\n"
	"	push %rbx\n	push %rbp\n	push %r12\n	push %r13\n	push %r14\n	push %r15\n"
	"	mov gpr_pattern+0(%rip), %rax\n"
	"	mov gpr_pattern+8(%rip), %rbx\n"
	"	mov gpr_pattern+16(%rip), %rcx\n"
	"	mov gpr_pattern+24(%rip), %rdx\n"
	"	mov gpr_pattern+32(%rip), %rbp\n"
	"	mov gpr_pattern+40(%rip), %r8\n"
	"	mov gpr_pattern+48(%rip), %r9\n"
	"	mov gpr_pattern+56(%rip), %r10\n"
	"	mov gpr_pattern+64(%rip), %r11\n"
	"	mov gpr_pattern+72(%rip), %r12\n"
	"	mov gpr_pattern+80(%rip), %r13\n"
	"	mov gpr_pattern+88(%rip), %r14\n"
	"	mov gpr_pattern+96(%rip), %r15\n"
	"	vmovdqa ymm_pattern+0(%rip), %ymm0\n"
	"	vmovdqa ymm_pattern+32(%rip), %ymm1\n"
	"	vmovdqa ymm_pattern+64(%rip), %ymm2\n"
	"	vmovdqa ymm_pattern+96(%rip), %ymm3\n"
	"	vmovdqa ymm_pattern+128(%rip), %ymm4\n"
	"	vmovdqa ymm_pattern+160(%rip), %ymm5\n"
	"	vmovdqa ymm_pattern+192(%rip), %ymm6\n"
	"	vmovdqa ymm_pattern+224(%rip), %ymm7\n"
	"	vmovdqa ymm_pattern+256(%rip), %ymm8\n"
	"	vmovdqa ymm_pattern+288(%rip), %ymm9\n"
	"	vmovdqa ymm_pattern+320(%rip), %ymm10\n"
	"	vmovdqa ymm_pattern+352(%rip), %ymm11\n"
	"	vmovdqa ymm_pattern+384(%rip), %ymm12\n"
	"	vmovdqa ymm_pattern+416(%rip), %ymm13\n"
	"	vmovdqa ymm_pattern+448(%rip), %ymm14\n"
	"1:\n"
	"	cmp gpr_pattern+0(%rip), %rax\n	jne 10f\n"
	"	cmp gpr_pattern+8(%rip), %rbx\n	jne 11f\n"
	"	cmp gpr_pattern+16(%rip), %rcx\n	jne 12f\n"
	"	cmp gpr_pattern+24(%rip), %rdx\n	jne 13f\n"
	"	cmp gpr_pattern+32(%rip), %rbp\n	jne 14f\n"
	"	cmp gpr_pattern+40(%rip), %r8\n	jne 15f\n"
	"	cmp gpr_pattern+48(%rip), %r9\n	jne 16f\n"
	"	cmp gpr_pattern+56(%rip), %r10\n	jne 17f\n"
	"	cmp gpr_pattern+64(%rip), %r11\n	jne 18f\n"
	"	cmp gpr_pattern+72(%rip), %r12\n	jne 19f\n"
	"	cmp gpr_pattern+80(%rip), %r13\n	jne 20f\n"
	"	cmp gpr_pattern+88(%rip), %r14\n	jne 21f\n"
	"	cmp gpr_pattern+96(%rip), %r15\n	jne 22f\n"
#define CHECK_YMM(n, off, label) \
	"	vpxor ymm_pattern+" #off "(%rip), %ymm" #n ", %ymm15\n" \
	"	vptest %ymm15, %ymm15\n	jnz " #label "f\n"
	CHECK_YMM(0, 0, 23) CHECK_YMM(1, 32, 24) CHECK_YMM(2, 64, 25)
	CHECK_YMM(3, 96, 26) CHECK_YMM(4, 128, 27) CHECK_YMM(5, 160, 28)
	CHECK_YMM(6, 192, 29) CHECK_YMM(7, 224, 30) CHECK_YMM(8, 256, 31)
	CHECK_YMM(9, 288, 32) CHECK_YMM(10, 320, 33) CHECK_YMM(11, 352, 34)
	CHECK_YMM(12, 384, 35) CHECK_YMM(13, 416, 36) CHECK_YMM(14, 448, 37)
	"	incq (%rsi)\n"
	"	dec %rdi\n"
	"	jnz 1b\n"
	"	xor %eax, %eax\n"
	"	jmp 9f\n"
	"10:	mov $1, %eax\n	jmp 9f\n"
	"11:	mov $2, %eax\n	jmp 9f\n"
	"12:	mov $3, %eax\n	jmp 9f\n"
	"13:	mov $4, %eax\n	jmp 9f\n"
	"14:	mov $5, %eax\n	jmp 9f\n"
	"15:	mov $6, %eax\n	jmp 9f\n"
	"16:	mov $7, %eax\n	jmp 9f\n"
	"17:	mov $8, %eax\n	jmp 9f\n"
	"18:	mov $9, %eax\n	jmp 9f\n"
	"19:	mov $10, %eax\n	jmp 9f\n"
	"20:	mov $11, %eax\n	jmp 9f\n"
	"21:	mov $12, %eax\n	jmp 9f\n"
	"22:	mov $13, %eax\n	jmp 9f\n"
	"23:	mov $14, %eax\n	jmp 9f\n"
	"24:	mov $15, %eax\n	jmp 9f\n"
	"25:	mov $16, %eax\n	jmp 9f\n"
	"26:	mov $17, %eax\n	jmp 9f\n"
	"27:	mov $18, %eax\n	jmp 9f\n"
	"28:	mov $19, %eax\n	jmp 9f\n"
	"29:	mov $20, %eax\n	jmp 9f\n"
	"30:	mov $21, %eax\n	jmp 9f\n"
	"31:	mov $22, %eax\n	jmp 9f\n"
	"32:	mov $23, %eax\n	jmp 9f\n"
	"33:	mov $24, %eax\n	jmp 9f\n"
	"34:	mov $25, %eax\n	jmp 9f\n"
	"35:	mov $26, %eax\n	jmp 9f\n"
	"36:	mov $27, %eax\n	jmp 9f\n"
	"37:	mov $28, %eax\n	jmp 9f\n"
	"9:\n"
	"	vzeroupper\n"
	"	pop %r15\n	pop %r14\n	pop %r13\n	pop %r12\n	pop %rbp\n	pop %rbx\n"
	"	ret\n");

uint64_t regloop(uint64_t turns, volatile uint64_t *counter);

static void fill_patterns(void)
{
	uint64_t x = 0x9e3779b97f4a7c15ull;

	for (int i = 0; i < 13; i++) {
		x = x * 6364136223846793005ull + 1442695040888963407ull;
		gpr_pattern[i] = x;
	}
	for (int i = 0; i < 15; i++)
		for (int j = 0; j < 4; j++) {
			x = x * 6364136223846793005ull + 1442695040888963407ull;
			ymm_pattern[i][j] = x;
		}
}

int main(void)
{
	sigset_t want, now;
	struct timespec nap = {0, 200000}, last, t;

	fill_patterns();
	sigemptyset(&want);
	sigaddset(&want, SIGUSR2);
	sigprocmask(SIG_SETMASK, &want, NULL);
	clock_gettime(CLOCK_MONOTONIC, &last);

	for (;;) {
		uint64_t bad = regloop(50000, &counter);
		if (bad != 0) {
			printf("corrupt register %llu\n", (unsigned long long)(bad - 1));
			fflush(stdout);
			exit(3);
		}
		sigprocmask(SIG_SETMASK, NULL, &now);
		if (memcmp(&now, &want, sizeof(now)) != 0) {
			printf("corrupt signal mask %#lx\n", ((unsigned long *)&now)[0]);
			fflush(stdout);
			exit(3);
		}
		if (nanosleep(&nap, NULL) != 0) {
			printf("corrupt nanosleep result: %s\n", strerror(errno));
			fflush(stdout);
			exit(3);
		}

		clock_gettime(CLOCK_MONOTONIC, &t);
		if ((t.tv_sec - last.tv_sec) * 1000000000L + (t.tv_nsec - last.tv_nsec) >= 20000000L) {
			printf("count %llu\n", (unsigned long long)counter);
			fflush(stdout);
			last = t;
		}
	}
}
