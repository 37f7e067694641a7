/* rst_xstate: the main thread spins in an assembly loop that holds values
 * derived from a generation number G in zmm0-zmm30 (zmm k holds the 64-bit
 * value G << 32 | 0x25a50000 + k in every lane) and checks them on every
 * pass. G lives in r12 only; the loop mirrors it to memory for the reports.
 * A mismatch stops the checks and is reported.
 *
 * A second thread reads commands from stdin:
 *   bump    asks the loop to move to generation G+1 and load its values;
 *           prints "gen G" once it did
 *   report  prints "report gen=G mismatch=0|1 spinning=yes|no", spinning
 *           telling whether the loop still makes passes
 * It prints "ready" once the loop runs. */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

volatile long rst_gen, rst_spins, rst_bump, rst_mismatch;

void rst_spin(void);

__asm__(
	".text\n"
	".globl rst_spin\n"
	"rst_spin:\n"
	"	mov $1, %r12\n"
	"1:	# load the values of generation r12\n"
	"	.irp k,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30\n"
	"	mov %r12, %rax\n"
	"	shl $32, %rax\n"
	"	or $(0x25a50000+\\k), %rax\n"
	"	vpbroadcastq %rax, %zmm\\k\n"
	"	.endr\n"
	"	mov %r12, rst_gen(%rip)\n"
	"2:	# check them\n"
	"	.irp k,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30\n"
	"	mov %r12, %rax\n"
	"	shl $32, %rax\n"
	"	or $(0x25a50000+\\k), %rax\n"
	"	vpbroadcastq %rax, %zmm31\n"
	"	vpcmpq $4, %zmm31, %zmm\\k, %k1\n"
	"	kortestw %k1, %k1\n"
	"	jnz 3f\n"
	"	.endr\n"
	"	lock incq rst_spins(%rip)\n"
	"	cmpq $0, rst_bump(%rip)\n"
	"	je 2b\n"
	"	movq $0, rst_bump(%rip)\n"
	"	inc %r12\n"
	"	jmp 1b\n"
	"3:	movq $1, rst_mismatch(%rip)\n"
	"4:	pause\n"
	"	jmp 4b\n");

static void *commands(void *arg)
{
	while (rst_spins == 0)
		usleep(1000);
	printf("ready\n");
	fflush(stdout);

	char line[64];
	while (fgets(line, sizeof line, stdin)) {
		if (strcmp(line, "bump\n") == 0) {
			long gen = rst_gen;
			rst_bump = 1;
			while (rst_gen == gen && !rst_mismatch)
				usleep(1000);
			printf("gen %ld\n", rst_gen);
		} else if (strcmp(line, "report\n") == 0) {
			long spins = rst_spins;
			usleep(20 * 1000);
			printf("report gen=%ld mismatch=%ld spinning=%s\n", rst_gen, rst_mismatch,
			       rst_spins != spins ? "yes" : "no");
		} else {
			printf("error unknown command %s", line);
		}
		fflush(stdout);
	}
	return NULL;
}

int main(void)
{
	pthread_t t;
	pthread_create(&t, NULL, commands, NULL);
	rst_spin();
	return 0;
}
