/*
 * Spins inside an rseq critical section of the rseq area glibc registered.
 *
 * Prints "cs START END COUNTER" (the section's address range and the
 * address of the abort counter, hex) once, then "abort N" each time the
 * kernel aborts the section, after which it enters the section again. Without an abort it spins forever, so a
 * tracer that leaves the thread inside the section after the kernel has
 * forgotten it is seen as silence.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/rseq.h>

/* int spin_in_cs(void *rseq_cs_field): returns 0 when aborted. */
__asm__(
	".data\n"
	".balign 32\n"
	"cs_desc:\n"
	"	.long 0, 0\n"
	"	.quad cs_start, cs_end - cs_start, cs_abort\n"
	".text\n"
	".globl spin_in_cs, cs_start, cs_end\n"
	"spin_in_cs:\n"
	"	lea cs_desc(%rip), %rax\n"
	"	mov %rax, (%rdi)\n"
	"cs_start:\n"
	"	pause\n"
	"	jmp cs_start\n"
	"cs_end:\n"
	"	ret\n"
	"	.long 0x53053053\n"
	"cs_abort:\n"
	"	xor %eax, %eax\n"
	"	ret\n");

int spin_in_cs(void *rseq_cs_field);
extern char cs_start[], cs_end[];
volatile unsigned long aborts;

int main(void)
{
	if (__rseq_size == 0) {
		printf("no rseq registration\n");
		return 2;
	}
	struct rseq *rs = (struct rseq *)((char *)__builtin_thread_pointer() + __rseq_offset);

	printf("cs %lx %lx %lx\n", (unsigned long)cs_start, (unsigned long)cs_end, (unsigned long)&aborts);
	fflush(stdout);
	for (;;) {
		spin_in_cs((void *)&rs->rseq_cs);
		aborts++;
		printf("abort %lu\n", aborts);
		fflush(stdout);
	}
}
