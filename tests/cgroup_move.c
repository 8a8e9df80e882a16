// Build and run: gcc -O2 -o /tmp/cgroup_move tests/cgroup_move.c && /tmp/cgroup_move /sys/fs/cgroup/memory 8
// (as root; the second argument is how many moves). Used for BENCHMARKS.md, session 16.
// How long a fresh child takes to move itself into a fresh cgroup (writing 0 to cgroup.procs),
// after a quiet spell: the step a job's start waits for.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
static double now_ms(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec*1e3+t.tv_nsec/1e6;}
int main(int argc,char**argv){
  const char*base=argc>1?argv[1]:"/sys/fs/cgroup/memory";
  int n=argc>2?atoi(argv[2]):10;
  for(int i=0;i<n;i++){
    char dir[512],procs[600];
    snprintf(dir,sizeof dir,"%s/probe-%d-%d",base,getpid(),i);
    if(mkdir(dir,0755)){perror("mkdir");return 1;}
    snprintf(procs,sizeof procs,"%s/cgroup.procs",dir);
    usleep(200000+ (i%4)*250000);
    int p[2];pipe(p);
    pid_t c=fork();
    if(c==0){double t0=now_ms();int fd=open(procs,O_WRONLY);write(fd,"0",1);close(fd);double t1=now_ms();
      write(p[1],&t1,sizeof t1);write(p[1],&t0,sizeof t0);_exit(0);}
    double t1,t0;read(p[0],&t1,sizeof t1);read(p[0],&t0,sizeof t0);waitpid(c,0,0);
    printf("%s move %.3f ms\n",base,t1-t0);
    rmdir(dir);close(p[0]);close(p[1]);
  }
  return 0;
}
